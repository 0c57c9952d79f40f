#![forbid(unsafe_code)]
pub mod packet;
pub mod policy;
pub mod wire;
