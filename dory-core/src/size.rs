//! Sizes: Kubernetes quantities in bytes, and the rules that turn a byte
//! count into a plugin's size option (`listOfStorageResourceOptions`,
//! `factorForConversion`). Shared by doryd and dory-csi, so a claim and a
//! CreateVolume of the same size ask the plugin for the same thing.

use crate::config::DriverConfig;
use crate::volume::CreateOptions;

/// How a byte count becomes options (from the driver's json).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeRules {
    /// Option names that carry the size; the first is added when none is set.
    pub resource_options: Vec<String>,
    /// Bytes per size unit.
    pub factor: u64,
    /// Options added when neither the class nor an override set them.
    pub defaults: CreateOptions,
}

impl SizeRules {
    /// The rules a driver configuration sets.
    pub fn from_config(config: &DriverConfig) -> Self {
        Self {
            resource_options: config.storage_resource_options.clone(),
            factor: config.factor_for_conversion,
            defaults: config.default_options.clone(),
        }
    }

    /// Writes the size of `bytes` (rounded up to whole units) into every size
    /// option already in `options`, or into the first size option when none
    /// is there. Returns the bytes the plugin is really asked for, or `None`
    /// when no size is sent (a zero request, or no size options).
    pub fn apply(&self, options: &mut CreateOptions, bytes: u128) -> Option<u128> {
        if bytes == 0 || self.resource_options.is_empty() {
            return None;
        }
        let units = size_in_units(bytes, self.factor);
        let size = units.to_string();
        let mut placed = false;
        for key in &self.resource_options {
            if let Some(value) = options.get_mut(key) {
                value.clone_from(&size);
                placed = true;
            }
        }
        if !placed {
            options.insert(self.resource_options[0].clone(), size);
        }
        Some(units.saturating_mul(u128::from(self.factor.max(1))))
    }
}

/// Parses a Kubernetes quantity (`10Gi`, `500M`, `1e9`, `1.5Ti`, `100m`)
/// into bytes, rounding fractions up.
pub fn quantity_to_bytes(quantity: &str) -> Result<u128, String> {
    let text = quantity.trim();
    let bad = || format!("invalid quantity {quantity:?}");
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (mantissa, exponent): (&str, i32) = match suffix.strip_prefix(['e', 'E']) {
        Some(exp) if !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit() || c == '-' || c == '+') => {
            (number, exp.parse().map_err(|_| bad())?)
        }
        _ => (number, 0),
    };
    let multiplier: u128 = match if exponent != 0 { "" } else { suffix } {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "m" => return milli(mantissa).ok_or_else(bad),
        _ => return Err(bad()),
    };
    if mantissa.starts_with('-') {
        return Err(format!("negative quantity {quantity:?}"));
    }
    let (whole, fraction) = mantissa.trim_start_matches('+').split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    // value = digits * 10^(exponent - fraction.len()) * multiplier, rounded up.
    let value: u128 = digits.parse().map_err(|_| bad())?;
    let scale = exponent.checked_sub(i32::try_from(fraction.len()).map_err(|_| bad())?).ok_or_else(bad)?;
    let scaled = value.checked_mul(multiplier).ok_or_else(bad)?;
    if scale >= 0 {
        scaled.checked_mul(10u128.checked_pow(scale.unsigned_abs()).ok_or_else(bad)?).ok_or_else(bad)
    } else {
        let divisor = 10u128.checked_pow(scale.unsigned_abs()).ok_or_else(bad)?;
        Ok(scaled.div_ceil(divisor))
    }
}

/// Milli-units of bytes (`1500m` = 1.5 bytes) rounded up.
fn milli(number: &str) -> Option<u128> {
    let value: u128 = number.parse().ok()?;
    Some(value.div_ceil(1000))
}

/// The size in units of `factor`, rounded up: never 0 for a non-zero request.
pub fn size_in_units(bytes: u128, factor: u64) -> u128 {
    bytes.div_ceil(u128::from(factor.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> SizeRules {
        SizeRules {
            resource_options: vec!["size".into(), "sizeInGiB".into()],
            factor: 1 << 30,
            defaults: CreateOptions::new(),
        }
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(quantity_to_bytes("10Gi").unwrap(), 10 << 30);
        assert_eq!(quantity_to_bytes("500Mi").unwrap(), 500 << 20);
        assert_eq!(quantity_to_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(quantity_to_bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(quantity_to_bytes("1e9").unwrap(), 1_000_000_000);
        assert_eq!(quantity_to_bytes("123").unwrap(), 123);
        assert_eq!(quantity_to_bytes("1500m").unwrap(), 2);
        assert!(quantity_to_bytes("ten").is_err());
        assert!(quantity_to_bytes("-1Gi").is_err());
        assert!(quantity_to_bytes("1Qi").is_err());
    }

    #[test]
    fn extreme_exponents_are_errors_not_overflows() {
        assert!(quantity_to_bytes("1.5e-2147483648").is_err());
        assert!(quantity_to_bytes("1e2147483647").is_err());
        assert!(quantity_to_bytes("1e99999999999").is_err());
    }

    #[test]
    fn size_rounds_up_and_is_never_zero() {
        assert_eq!(size_in_units(500 << 20, 1 << 30), 1, "500Mi is 1 GiB, not 0");
        assert_eq!(size_in_units(10 << 30, 1 << 30), 10);
        assert_eq!(size_in_units((10 << 30) + 1, 1 << 30), 11);
    }

    #[test]
    fn apply_fills_the_present_size_keys_or_the_first() {
        let mut options = CreateOptions::from([("sizeInGiB".to_owned(), "1".to_owned())]);
        assert_eq!(rules().apply(&mut options, 20 << 30), Some(20 << 30));
        assert_eq!(options["sizeInGiB"], "20");
        assert!(!options.contains_key("size"));
        let mut options = CreateOptions::new();
        assert_eq!(rules().apply(&mut options, 1), Some(1 << 30), "what the plugin really gets: one unit");
        assert_eq!(options["size"], "1");
        assert_eq!(rules().apply(&mut CreateOptions::new(), 0), None);
    }
}
