"""Local runtime (infrastructure.local), the rtap CLI and the Compose deployment files."""
