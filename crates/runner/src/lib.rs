//! A bounded, key-deduplicating async executor for long operations (see issue 2).
