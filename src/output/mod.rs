//! What the controller writes: the target Secret's shape, the keyed record of
//! the token it holds, and the reading of the client credentials.

pub mod formats;
pub mod secret;
