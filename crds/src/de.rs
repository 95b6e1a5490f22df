//! Deserialization helpers for the loose typing of GOST's configuration files.
//!
//! GOST decodes its files with viper and mapstructure's weak typing: keys match fields whatever
//! their case, a number where a string is expected is formatted, a null is the zero value, a
//! duration may be an integer number of nanoseconds. [`Lenient`] matches keys for both formats
//! and gives JSON what the YAML parser already does (any scalar reads into a string field as its
//! text); the helpers below cover nulls and durations for every format.

use std::fmt;
use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};

/// Reads a null as the field's default (an empty list or map, a default section), as GOST
/// does: its `-O json` prints `"services": null` for a command line with only `-F`, and a YAML
/// section whose entries are all commented out (`metadata:` alone) is a null. Any other value
/// must have the field's own type. Schemas ignore `deserialize_with`, so the CRDs are unchanged
/// (the API server drops nulls of non-nullable fields itself).
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// Reads a handler's or listener's `type` that is null or blank (spaces only) as the default
/// (`auto`, `tcp`), as GOST does (it trims these two): a template that renders `type: ""`, or a
/// `type:` left without a value, loads. Any other name must be one of the type's own.
pub(crate) fn blank_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    type_or_default(deserializer, |name| name.trim().is_empty())
}

/// Reads a connector's or dialer's `type` that is null or empty as the default (`http`,
/// `tcp`), as GOST does; GOST does not trim these, so spaces are an unknown type.
pub(crate) fn empty_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    type_or_default(deserializer, str::is_empty)
}

/// Reads an optional name (a selector's `strategy`) that is null or empty as absent, the
/// default, as GOST does: its `-O json` and `-O yaml` print `strategy: ""` for a selector that
/// left it out. Any other name must be one of the type's own.
pub(crate) fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<String>::deserialize(deserializer)? {
        Some(name) if !name.is_empty() => {
            T::deserialize(de::value::StringDeserializer::<D::Error>::new(name)).map(Some)
        }
        _ => Ok(None),
    }
}

fn type_or_default<'de, D, T>(deserializer: D, blank: fn(&str) -> bool) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    match Option::<String>::deserialize(deserializer)? {
        Some(name) if !blank(&name) => {
            T::deserialize(de::value::StringDeserializer::<D::Error>::new(name))
        }
        _ => Ok(T::default()),
    }
}

/// Reads an optional field that GOST types as `time.Duration`: a duration text (`30s`, kept as
/// written), or an integer number of nanoseconds, which is how GOST's `-O json` prints one
/// (`"failTimeout": 30000000000`) and how it reads a YAML integer. A number is kept as its
/// duration text (`30s`), so `gost -O yaml` prints what GOST's does.
pub(crate) fn go_duration<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    struct DurationVisitor;

    impl<'de> Visitor<'de> for DurationVisitor {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as `30s`, or an integer number of nanoseconds")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(text.to_string()))
        }

        fn visit_i64<E: de::Error>(self, nanos: i64) -> Result<Self::Value, E> {
            Ok(Some(go_duration_text(nanos)))
        }

        fn visit_u64<E: de::Error>(self, nanos: u64) -> Result<Self::Value, E> {
            let nanos = i64::try_from(nanos)
                .map_err(|_| E::invalid_value(Unexpected::Unsigned(nanos), &self))?;
            self.visit_i64(nanos)
        }

        // JSON read by Go is all float64; an integral one is as good as an integer there.
        fn visit_f64<E: de::Error>(self, nanos: f64) -> Result<Self::Value, E> {
            if nanos.fract() == 0.0 && nanos.abs() < i64::MAX as f64 {
                self.visit_i64(nanos as i64)
            } else {
                Err(E::invalid_value(Unexpected::Float(nanos), &self))
            }
        }
    }

    deserializer.deserialize_option(DurationVisitor)
}

/// A number of nanoseconds in Go's duration syntax, largest unit first (`1m30s`, `1s500ms`).
fn go_duration_text(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let mut text = String::from(if nanos < 0 { "-" } else { "" });
    let mut rest = nanos.unsigned_abs();
    for (unit, size) in [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        if rest >= size {
            let _ = write!(text, "{}{unit}", rest / size);
            rest %= size;
        }
    }
    text
}

/// A deserializer that reads GOST's configuration model as viper does, at every depth:
/// - the keys of a struct match its field names ignoring ASCII case (`certfile`, `Services`),
///   as viper lowercases every key; a key that matches no field is passed on as written, so
///   `deny_unknown_fields` still names it and lists the accepted ones. Other maps (`metadata`)
///   keep their keys as written;
/// - with `scalars_as_strings` (JSON), a number or boolean reads into a string field as its
///   text, as the YAML parser reads any scalar (`"password": 123456` is the password `123456`);
///   every other type stays an error of the field it is in. YAML goes without it: there a
///   string field gets the scalar as written (`0x1F`), which a number would lose.
///
/// It works on the parser's stream, so loading costs no tree and no second pass. The custom
/// resources are read without it: their schemas, which the API server enforces, are
/// case-sensitive and typed.
pub(crate) struct Lenient<D> {
    inner: D,
    scalars_as_strings: bool,
}

impl<D> Lenient<D> {
    pub(crate) fn new(inner: D, scalars_as_strings: bool) -> Self {
        Lenient {
            inner,
            scalars_as_strings,
        }
    }
}

/// Forwards `deserialize_*` methods to the inner deserializer with the visitor wrapped.
macro_rules! forward_wrapped {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Self::Error> {
                let visitor = Wrapped::new(visitor, self.scalars_as_strings, None);
                self.inner.$method($($arg,)* visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Lenient<D> {
    type Error = D::Error;

    forward_wrapped!(
        deserialize_any(),
        deserialize_bool(),
        deserialize_i8(),
        deserialize_i16(),
        deserialize_i32(),
        deserialize_i64(),
        deserialize_i128(),
        deserialize_u8(),
        deserialize_u16(),
        deserialize_u32(),
        deserialize_u64(),
        deserialize_u128(),
        deserialize_f32(),
        deserialize_f64(),
        deserialize_char(),
        deserialize_bytes(),
        deserialize_byte_buf(),
        deserialize_option(),
        deserialize_unit(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_seq(),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_map(),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
        deserialize_identifier(),
        deserialize_ignored_any(),
    );

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let visitor = Wrapped::new(visitor, self.scalars_as_strings, Some(fields));
        self.inner.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_option(NullAsEmpty {
            visitor,
            scalars_as_strings: self.scalars_as_strings,
        })
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Forwards `visit_*` methods of scalars to the wrapped visitor.
macro_rules! forward_scalars {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, value: $ty) -> Result<Self::Value, E> {
                self.visitor.$method(value)
            }
        )*
    };
}

/// A visitor whose nested values are read through [`Lenient`] too; `fields` are the field
/// names when it reads a struct.
struct Wrapped<V> {
    visitor: V,
    scalars_as_strings: bool,
    fields: Option<&'static [&'static str]>,
}

impl<V> Wrapped<V> {
    fn new(visitor: V, scalars_as_strings: bool, fields: Option<&'static [&'static str]>) -> Self {
        Wrapped {
            visitor,
            scalars_as_strings,
            fields,
        }
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrapped<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_scalars!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.visitor
            .visit_some(Lenient::new(d, self.scalars_as_strings))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.visitor
            .visit_newtype_struct(Lenient::new(d, self.scalars_as_strings))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_seq(LenientSeq {
            seq,
            scalars_as_strings: self.scalars_as_strings,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_map(LenientMap {
            map,
            scalars_as_strings: self.scalars_as_strings,
            fields: self.fields,
        })
    }

    // The model's enums are names only (unit variants): nothing inside them to read leniently.
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_enum(data)
    }
}

/// Reads a null as the empty string (`password:` with nothing after it, as mapstructure reads
/// it), anything else as a string field of [`Lenient`].
struct NullAsEmpty<V> {
    visitor: V,
    scalars_as_strings: bool,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for NullAsEmpty<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_str("")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_str("")
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.scalars_as_strings {
            d.deserialize_any(ScalarAsString {
                visitor: self.visitor,
            })
        } else {
            d.deserialize_string(self.visitor)
        }
    }
}

/// Reads a string, or a number or boolean as its text; anything else is the wrapped visitor's
/// type error (`invalid type: sequence, expected a string`).
struct ScalarAsString<V> {
    visitor: V,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for ScalarAsString<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_scalars!(
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
    );

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        self.visitor.visit_string(value.to_string())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        self.visitor.visit_string(value.to_string())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        self.visitor.visit_string(value.to_string())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        self.visitor.visit_string(value.to_string())
    }
}

struct LenientSeq<A> {
    seq: A,
    scalars_as_strings: bool,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for LenientSeq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.seq.next_element_seed(LenientSeed {
            seed,
            scalars_as_strings: self.scalars_as_strings,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

struct LenientMap<A> {
    map: A,
    scalars_as_strings: bool,
    fields: Option<&'static [&'static str]>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for LenientMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.fields {
            Some(fields) => self.map.next_key_seed(FieldName { seed, fields }),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.map.next_value_seed(LenientSeed {
            seed,
            scalars_as_strings: self.scalars_as_strings,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

struct LenientSeed<T> {
    seed: T,
    scalars_as_strings: bool,
}

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for LenientSeed<T> {
    type Value = T::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.seed
            .deserialize(Lenient::new(d, self.scalars_as_strings))
    }
}

/// A key of a struct, handed on as the field name it matches ignoring ASCII case, or as written
/// when it matches none.
struct FieldName<K> {
    seed: K,
    fields: &'static [&'static str],
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for FieldName<K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for FieldName<K> {
    type Value = K::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        // No two fields of the model differ only in case (camelCase names, no aliases).
        let field = self.fields.iter().find(|f| f.eq_ignore_ascii_case(key));
        self.seed
            .deserialize(StrDeserializer::new(field.copied().unwrap_or(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_go_syntax() {
        assert_eq!(go_duration_text(30_000_000_000), "30s");
        assert_eq!(go_duration_text(90_000_000_000), "1m30s");
        assert_eq!(go_duration_text(1_500_000_000), "1s500ms");
        assert_eq!(go_duration_text(3_600_000_000_001), "1h1ns");
        assert_eq!(go_duration_text(0), "0s");
        assert_eq!(go_duration_text(-1_000_000_000), "-1s");
        assert_eq!(go_duration_text(i64::MIN), "-2562047h47m16s854ms775us808ns");
    }
}
