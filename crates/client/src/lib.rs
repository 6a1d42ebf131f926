//! The client. (Being written.)
