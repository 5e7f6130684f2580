"""Service functions: what the admin socket, the CLI and the tests call. Each service validates
its input, talks to the store, and raises ServiceError subclasses with one clear line."""
