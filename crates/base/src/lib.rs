//! What every capability of Daena shares: the one typed [`config`], the [`error`] type with
//! its table of public codes, and the [`clock`] every use case reads time from.

pub mod clock;
pub mod config;
pub mod error;
