//! (being written) embedded engine
