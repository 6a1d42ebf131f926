//! Job, lease and device state machines. (Being written.)
