//! RESP framing: the bounded request parser (ours) and reply encoding.

pub mod reply;
pub mod request;

pub use reply::{Proto, Wire};
