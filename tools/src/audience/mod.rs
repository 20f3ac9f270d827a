//! The audience: a typed definition ([`definition`]) compiled to one membership query ([`compile`]), evaluated to
//! an exact size, a funnel, a breakdown and ranked members ([`report`]), held and edited per conversation
//! ([`session`]) through the `find_audience` tool ([`find_audience`]).
//!
//! Architecture Invariant: membership comes only from the compiled query. The vector index ranks members by the
//! intent, within the membership, and never adds or drops one.

pub mod actions;
pub mod compile;
pub mod definition;
pub mod export;
pub mod find_audience;
pub mod lookalike;
pub mod outcomes;
pub mod refine;
pub mod report;
pub mod saved;
pub mod session;

pub use definition::AudienceDefinition;
pub use find_audience::FindAudience;
pub use report::AudienceReport;
pub use session::{AudienceSession, Edit};
