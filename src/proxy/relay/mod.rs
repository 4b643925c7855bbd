//! The relay's parts, each unit-tested without sockets:
//! - [`outbox`]: backend bytes to the client, with timebox's own messages spliced in at a frame
//!   boundary;
//! - [`held`]: the few backend frames the relay reads (CommandComplete, ErrorResponse,
//!   ParameterStatus), decoded with `postgres_protocol`;
//! - [`sync`]: forwarded frames and backend replies → statement outcomes, and the backend's
//!   [`sync::Phase`] (idle, in a transaction, busy);
//! - [`gate`]: client frames held until their audit records are acknowledged.

pub(crate) mod gate;
pub(crate) mod held;
pub(crate) mod outbox;
pub(crate) mod sync;
