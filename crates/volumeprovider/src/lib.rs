//! The cephvol daemon and CLI (issue 6): flags, the IRI Volume gRPC server on a unix socket,
//! wiring of store, backend, runner and controllers, and the operator CLI.
