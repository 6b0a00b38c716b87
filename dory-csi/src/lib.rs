//! tmp
#![allow(missing_docs)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}
