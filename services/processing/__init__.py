"""PyFlink jobs (BaseJob subclasses) run together by the JobCoordinator."""
