//! The `missioncontrol.lifecycle.v1` protocol: messages, client stubs and
//! server traits, generated from the `.proto` files beside this one.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("missioncontrol.lifecycle.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("lifecycle_descriptor");
}

pub use prost_types;
pub use v1::*;
