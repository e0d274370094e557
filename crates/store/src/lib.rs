//! The typed object store: metadata, optimistic concurrency, watch (see issue 3).
