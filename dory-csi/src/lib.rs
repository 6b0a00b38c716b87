//! `dory-csi`: any Docker volume plugin as a CSI driver.
//!
//! A third frontend next to `dory` (FlexVolume) and `doryd` (provisioner):
//! a tonic gRPC server on a unix socket serving CSI v1.12's Identity,
//! Controller and Node services over whichever [`dory_core::VolumeBackend`]
//! the configuration names. The same binary runs in the controller
//! Deployment (`--controller`) and the node DaemonSet (`--node`).
//!
//! Layout: [`proto`] is the wire, compiled at build time from
//! `proto/csi.proto` by protox (pure Rust, no `protoc`); [`identity`],
//! [`controller`] and [`node`] translate RPCs into backend calls;
//! [`publish`] adds Mount IDs and ephemeral marks around `dory-mount`'s
//! engine, which `dory mount` uses too; errors become gRPC codes only in
//! [`status`].
//!
//! Deliberately not here: staging, block volumes, snapshots, expansion,
//! ControllerPublish. The Docker Volume API has none of them, and an
//! advertised capability that is not really implemented costs users more
//! than a missing one.

pub mod config;
pub mod controller;
pub mod driver;
pub mod error;
pub mod identity;
pub mod inflight;
pub mod kernel;
pub mod node;
pub mod publish;
pub mod server;
pub mod status;

/// The CSI v1.12 wire, generated from `proto/csi.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

/// The version reported as `vendor_version` and by `--version`.
pub const VERSION: &str = dory_core::VERSION;

/// The compiled descriptor's field numbers against the spec's (Appendix W
/// of `csi.md`, read from CSI v1.12.0): the client in the tests and the
/// server are generated from the same file, so only this catches a wrong
/// number in it.
#[cfg(test)]
mod wire_tests {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::Type;
    use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

    const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/csi.v1.bin"));

    fn file() -> prost_types::FileDescriptorProto {
        let set = FileDescriptorSet::decode(DESCRIPTOR).unwrap();
        set.file.into_iter().find(|f| f.package() == "csi.v1").expect("package csi.v1")
    }

    /// The message at `path` (`Outer.Inner`).
    fn message(path: &str) -> DescriptorProto {
        let file = file();
        let mut names = path.split('.');
        let first = names.next().unwrap();
        let mut found =
            file.message_type.iter().find(|m| m.name() == first).cloned().unwrap_or_else(|| panic!("{path}"));
        for name in names {
            found = found.nested_type.iter().find(|m| m.name() == name).cloned().unwrap_or_else(|| panic!("{path}"));
        }
        found
    }

    fn enumeration(message_path: &str, name: &str) -> EnumDescriptorProto {
        message(message_path).enum_type.into_iter().find(|e| e.name() == name).unwrap_or_else(|| panic!("{name}"))
    }

    /// `(name, number, type)` of every field of `path`; `type` is the
    /// message or enum's last name for those, else the scalar's proto name.
    fn fields(path: &str) -> Vec<(String, i32, String)> {
        message(path)
            .field
            .iter()
            .map(|f| {
                let kind = match f.r#type() {
                    Type::Message | Type::Enum => f.type_name().rsplit('.').next().unwrap_or_default().to_owned(),
                    Type::String => "string".into(),
                    Type::Bool => "bool".into(),
                    Type::Int64 => "int64".into(),
                    Type::Int32 => "int32".into(),
                    other => format!("{other:?}"),
                };
                (f.name().to_owned(), f.number(), kind)
            })
            .collect()
    }

    fn expect(table: &[(&str, i32, &str)]) -> Vec<(String, i32, String)> {
        table.iter().map(|(n, i, t)| (n.to_string(), *i, t.to_string())).collect()
    }

    #[test]
    fn the_descriptor_has_the_field_numbers_of_csi_v1_12() {
        // Maps are nested `<Field>Entry` messages.
        assert_eq!(
            fields("CreateVolumeRequest"),
            expect(&[
                ("name", 1, "string"),
                ("capacity_range", 2, "CapacityRange"),
                ("volume_capabilities", 3, "VolumeCapability"),
                ("parameters", 4, "ParametersEntry"),
                ("secrets", 5, "SecretsEntry"),
                ("volume_content_source", 6, "VolumeContentSource"),
                ("accessibility_requirements", 7, "TopologyRequirement"),
                ("mutable_parameters", 8, "MutableParametersEntry"),
            ])
        );
        assert_eq!(
            fields("NodePublishVolumeRequest"),
            expect(&[
                ("volume_id", 1, "string"),
                ("publish_context", 2, "PublishContextEntry"),
                ("staging_target_path", 3, "string"),
                ("target_path", 4, "string"),
                ("volume_capability", 5, "VolumeCapability"),
                ("readonly", 6, "bool"),
                ("secrets", 7, "SecretsEntry"),
                ("volume_context", 8, "VolumeContextEntry"),
            ])
        );
        assert_eq!(
            fields("VolumeCapability"),
            expect(&[("block", 1, "BlockVolume"), ("mount", 2, "MountVolume"), ("access_mode", 3, "AccessMode")])
        );
        let capability = message("VolumeCapability");
        assert_eq!(capability.oneof_decl.iter().map(|o| o.name()).collect::<Vec<_>>(), ["access_type"]);
        assert!(
            capability.field[..2].iter().all(|f| f.oneof_index == Some(0)) && capability.field[2].oneof_index.is_none()
        );
        assert_eq!(
            fields("VolumeCapability.MountVolume"),
            expect(&[("fs_type", 1, "string"), ("mount_flags", 2, "string"), ("volume_mount_group", 3, "string")])
        );
        let modes: Vec<(String, i32)> = enumeration("VolumeCapability.AccessMode", "Mode")
            .value
            .iter()
            .map(|v| (v.name().to_owned(), v.number()))
            .collect();
        let spec = [
            ("UNKNOWN", 0),
            ("SINGLE_NODE_WRITER", 1),
            ("SINGLE_NODE_READER_ONLY", 2),
            ("MULTI_NODE_READER_ONLY", 3),
            ("MULTI_NODE_SINGLE_WRITER", 4),
            ("MULTI_NODE_MULTI_WRITER", 5),
            ("SINGLE_NODE_SINGLE_WRITER", 6),
            ("SINGLE_NODE_MULTI_WRITER", 7),
        ];
        assert_eq!(modes, spec.map(|(n, i)| (n.to_owned(), i)));
        assert_eq!(
            fields("Volume"),
            expect(&[
                ("capacity_bytes", 1, "int64"),
                ("volume_id", 2, "string"),
                ("volume_context", 3, "VolumeContextEntry"),
                ("content_source", 4, "VolumeContentSource"),
                ("accessible_topology", 5, "Topology"),
            ])
        );
        assert_eq!(
            fields("NodeGetVolumeStatsResponse"),
            expect(&[("usage", 1, "VolumeUsage"), ("volume_condition", 2, "VolumeCondition")])
        );
        assert_eq!(fields("VolumeCondition"), expect(&[("abnormal", 1, "bool"), ("message", 2, "string")]));
        assert_eq!(fields("ProbeResponse"), expect(&[("ready", 1, "BoolValue")]));
    }
}
