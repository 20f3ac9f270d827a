//! (being written) server engine
