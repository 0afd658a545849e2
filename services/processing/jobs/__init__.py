"""Built-in jobs: each module declares one BaseJob subclass and its metric schema."""
