//! What doryd sends to the backend's Create, and what it names things:
//! pure functions of the claim, its class and the driver settings.

use std::collections::BTreeMap;

use dory_core::CreateOptions;
pub use dory_core::size::{SizeRules, quantity_to_bytes, size_in_units};

/// Class parameter: comma list of option keys a claim may override.
pub const ALLOW_OVERRIDES: &str = "allowOverrides";
/// Class parameter or claim annotation (`<prefix>/cloneOfPVC`): the claim to clone.
pub const CLONE_OF_PVC: &str = "cloneOfPVC";
/// The default Create option naming the volume to clone (the original's).
pub const CLONE_OF: &str = "cloneOf";

/// Everything the options depend on.
#[derive(Clone, Debug, Default)]
pub struct OptionInputs<'a> {
    /// The class's parameters.
    pub parameters: BTreeMap<String, String>,
    /// The claim's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The provisioner prefix (`dev.hpe.com` of `dev.hpe.com/nimble`).
    pub prefix: &'a str,
    /// The claim's storage request in bytes, if any.
    pub request_bytes: Option<u128>,
    /// The backend volume to clone, when cloning was asked for.
    pub clone_source: Option<String>,
    /// The Create option that names it (the driver's `cloneOptionName`;
    /// empty means [`CLONE_OF`]).
    pub clone_option: &'a str,
}

/// The Create options for a claim.
pub fn create_options(inputs: &OptionInputs<'_>, rules: &SizeRules) -> CreateOptions {
    let mut options: CreateOptions = inputs
        .parameters
        .iter()
        .filter(|(k, _)| k.as_str() != ALLOW_OVERRIDES && k.as_str() != CLONE_OF_PVC)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    if let Some(bytes) = inputs.request_bytes {
        rules.apply(&mut options, bytes);
    }

    let allowed: Vec<&str> = inputs
        .parameters
        .get(ALLOW_OVERRIDES)
        .map(|list| list.split(',').map(str::trim).filter(|k| !k.is_empty()).collect())
        .unwrap_or_default();
    for key in allowed {
        if let Some(value) = inputs.annotations.get(&format!("{}/{key}", inputs.prefix)) {
            options.insert(key.to_owned(), value.clone());
        }
    }

    if let Some(source) = &inputs.clone_source {
        let key = if inputs.clone_option.is_empty() { CLONE_OF } else { inputs.clone_option };
        options.insert(key.to_owned(), source.clone());
    }
    for (key, value) in &rules.defaults {
        options.entry(key.clone()).or_insert_with(|| value.clone());
    }
    options
}

/// The claim to clone, if asked: the claim annotation `<prefix>/cloneOfPVC`
/// wins over the class parameter.
pub fn clone_request(inputs: &OptionInputs<'_>) -> Option<String> {
    inputs
        .annotations
        .get(&format!("{}/{CLONE_OF_PVC}", inputs.prefix))
        .or_else(|| inputs.parameters.get(CLONE_OF_PVC))
        .filter(|s| !s.is_empty())
        .cloned()
}

/// How PVs (and so volumes) are named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PvNaming {
    /// `pvc-<claim uid>`, as external provisioners do.
    #[default]
    Uid,
    /// The original Doryd's names, made unambiguous:
    /// `<namespace>.<annotation <prefix>/docker-volume-name>` (a namespace
    /// never holds a `.`, so two claims cannot get one name; the original's
    /// `-` let `a` + `b-x` and `a-b` + `x` collide), else
    /// `<class>-<claim uid>`. A volume that exists already is never adopted.
    Original,
}

/// The PV name for a claim.
pub fn pv_name(
    naming: PvNaming,
    prefix: &str,
    namespace: &str,
    class: &str,
    uid: &str,
    annotations: &BTreeMap<String, String>,
) -> String {
    match naming {
        PvNaming::Uid => format!("pvc-{uid}"),
        PvNaming::Original => {
            match annotations.get(&format!("{prefix}/docker-volume-name")).filter(|v| !v.is_empty()) {
                Some(name) => format!("{namespace}.{name}"),
                None => format!("{class}-{uid}"),
            }
        }
    }
}

/// The prefix of a provisioner name: `dev.hpe.com` of `dev.hpe.com/nimble`.
pub fn prefix_of(provisioner: &str) -> &str {
    provisioner.split_once('/').map_or(provisioner, |(prefix, _)| prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn rules() -> SizeRules {
        SizeRules {
            resource_options: vec!["size".into(), "sizeInGiB".into()],
            factor: 1 << 30,
            defaults: CreateOptions::new(),
        }
    }

    #[test]
    fn class_parameters_size_and_defaults() {
        let mut with_defaults = rules();
        with_defaults.defaults = map(&[("manager", "k8s"), ("perfPolicy", "default")]).into_iter().collect();
        let inputs = OptionInputs {
            parameters: map(&[("perfPolicy", "fast"), ("sizeInGiB", "1")]),
            prefix: "dev.hpe.com",
            request_bytes: Some(20 << 30),
            ..Default::default()
        };
        let options = create_options(&inputs, &with_defaults);
        assert_eq!(options, map(&[("perfPolicy", "fast"), ("sizeInGiB", "20"), ("manager", "k8s")]));

        let inputs = OptionInputs { parameters: map(&[]), prefix: "p", request_bytes: Some(1), ..Default::default() };
        assert_eq!(create_options(&inputs, &rules()), map(&[("size", "1")]));
        let inputs = OptionInputs { parameters: map(&[]), prefix: "p", request_bytes: None, ..Default::default() };
        assert!(create_options(&inputs, &rules()).is_empty());
    }

    #[test]
    fn overrides_need_an_exact_key_and_permission() {
        let inputs = OptionInputs {
            parameters: map(&[("allowOverrides", " description , size"), ("description", "class")]),
            annotations: map(&[
                ("dev.hpe.com/description", "claim"),
                ("dev.hpe.com/sizeInGiB", "99"),
                ("dev.hpe.com/perfPolicy", "not allowed"),
            ]),
            prefix: "dev.hpe.com",
            request_bytes: None,
            clone_source: None,
            clone_option: "",
        };
        let options = create_options(&inputs, &rules());
        assert_eq!(options, map(&[("description", "claim")]), "sizeInGiB is not `size`; perfPolicy not allowed");
    }

    #[test]
    fn clone_requests_come_from_claim_or_class() {
        let mut inputs =
            OptionInputs { parameters: map(&[("cloneOfPVC", "golden")]), prefix: "dev.hpe.com", ..Default::default() };
        assert_eq!(clone_request(&inputs).as_deref(), Some("golden"));
        inputs.annotations = map(&[("dev.hpe.com/cloneOfPVC", "mine")]);
        assert_eq!(clone_request(&inputs).as_deref(), Some("mine"));
        inputs.clone_source = Some("vol-123".into());
        let options = create_options(&inputs, &rules());
        assert_eq!(options, map(&[("cloneOf", "vol-123")]), "cloneOfPVC itself is never sent");
        inputs.clone_option = "sourceVolume";
        assert_eq!(create_options(&inputs, &rules()), map(&[("sourceVolume", "vol-123")]));
    }

    #[test]
    fn names() {
        let none = BTreeMap::new();
        assert_eq!(pv_name(PvNaming::Uid, "p", "ns", "gold", "u-1", &none), "pvc-u-1");
        assert_eq!(pv_name(PvNaming::Original, "p", "ns", "gold", "u-1", &none), "gold-u-1");
        let named = map(&[("p/docker-volume-name", "db")]);
        assert_eq!(pv_name(PvNaming::Original, "p", "ns", "gold", "u-1", &named), "ns.db");
        let a = pv_name(PvNaming::Original, "p", "a", "c", "u", &map(&[("p/docker-volume-name", "b-x")]));
        let b = pv_name(PvNaming::Original, "p", "a-b", "c", "u", &map(&[("p/docker-volume-name", "x")]));
        assert_ne!(a, b, "namespaces cannot bleed into names");
        assert_eq!(prefix_of("dev.hpe.com/nimble"), "dev.hpe.com");
    }
}
