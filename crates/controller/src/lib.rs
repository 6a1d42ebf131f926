//! The controller. (Being written.)
