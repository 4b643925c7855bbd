//! The relay's parts, each unit-tested without sockets:
//! - [`outbox`]: backend bytes to the client, with timebox's own messages spliced in at a frame
//!   boundary;
//! - [`held`]: the few backend frames the relay reads (CommandComplete, ErrorResponse,
//!   ParameterStatus), decoded with `postgres_protocol`.

pub(crate) mod held;
pub(crate) mod outbox;
