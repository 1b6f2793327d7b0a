//! `Name`: the compact, shared byte string the tables are keyed by.

use std::borrow::Borrow;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable byte string shared between a table and its deadline index.
///
/// Names of up to `INLINE_BYTES` bytes (most lock and key names) are stored in the
/// value itself: a B-tree search compares them without following a pointer to another
/// cache line, and creating one allocates nothing. Longer names share one `Arc<[u8]>`
/// allocation between the table and its indexes (`Bytes` would be 32 bytes plus a
/// second allocation on first clone). Either way a `Name` is 24 bytes; with a million
/// held locks each stored twice, that size is most of the memory budget.
#[derive(Clone)]
pub struct Name(Repr);

/// Longest name stored inline: what fits beside a length byte and the enum's tag in
/// the 24 bytes the shared form needs anyway (a tag, then a 16-byte fat pointer).
const INLINE_BYTES: usize = 22;

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Shared(Arc<[u8]>),
}

impl Name {
    /// The bytes of the name.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(shared) => shared,
        }
    }

    /// A copy as `Bytes`, for replies and events.
    pub fn to_bytes(&self) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(self.as_bytes())
    }

    /// The name as lossy UTF-8, for error messages.
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

// Equality, order and hash are the bytes' own, whichever form holds them.
impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl From<&[u8]> for Name {
    fn from(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE_BYTES {
            let mut inline = [0u8; INLINE_BYTES];
            inline[..bytes.len()].copy_from_slice(bytes);
            Name(Repr::Inline { len: bytes.len() as u8, bytes: inline })
        } else {
            Name(Repr::Shared(Arc::from(bytes)))
        }
    }
}

impl std::ops::Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes_vec(deserializer)?;
        Ok(Name::from(bytes.as_slice()))
    }
}

/// Deserializes a byte string (serialized with `serialize_bytes`) into a `Vec<u8>`.
pub(crate) fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_bytes(Visitor)
}

/// Serde helpers for `Box<[u8]>` fields, stored as one byte string.
pub(crate) mod boxed_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[u8]>, D::Error> {
        Ok(super::serde_bytes_vec(d)?.into_boxed_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_24_bytes_in_either_form() {
        assert_eq!(std::mem::size_of::<Name>(), 24);
        assert!(matches!(Name::from(&[7u8; INLINE_BYTES][..]).0, Repr::Inline { .. }));
        assert!(matches!(Name::from(&[7u8; INLINE_BYTES + 1][..]).0, Repr::Shared(_)));
    }

    #[test]
    fn order_equality_and_hash_follow_the_bytes_across_forms() {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        let hash = |n: &Name| {
            let mut h = DefaultHasher::new();
            n.hash(&mut h);
            h.finish()
        };
        // Names around the inline limit, sharing prefixes, and the empty name.
        let mut raw: Vec<Vec<u8>> = vec![Vec::new(), b"a".to_vec(), vec![0u8; 3]];
        for len in [INLINE_BYTES - 1, INLINE_BYTES, INLINE_BYTES + 1, 40] {
            raw.push(vec![b'k'; len]);
            let mut bumped = vec![b'k'; len];
            bumped[len - 1] = b'l';
            raw.push(bumped);
        }
        for a in &raw {
            for b in &raw {
                let (na, nb) = (Name::from(a.as_slice()), Name::from(b.as_slice()));
                assert_eq!(na.cmp(&nb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(na == nb, a == b);
                if a == b {
                    assert_eq!(hash(&na), hash(&nb));
                }
            }
            let name = Name::from(a.as_slice());
            assert_eq!(name.as_bytes(), a.as_slice());
            let encoded = postcard::to_stdvec(&name).expect("encodes");
            assert_eq!(encoded, postcard::to_stdvec(&serde_bytes_ref(a)).expect("encodes"), "same bytes as before");
            assert_eq!(postcard::from_bytes::<Name>(&encoded).expect("decodes"), name);
        }
        // A table keyed by names is searched with plain byte slices.
        let table: std::collections::BTreeMap<Name, usize> =
            raw.iter().enumerate().map(|(i, r)| (Name::from(r.as_slice()), i)).collect();
        for (i, r) in raw.iter().enumerate() {
            assert_eq!(table.get(r.as_slice()), Some(&i));
        }
    }

    /// A byte string serialized the way `Name` always was (`serialize_bytes`).
    fn serde_bytes_ref(bytes: &[u8]) -> impl Serialize + '_ {
        struct Raw<'a>(&'a [u8]);
        impl Serialize for Raw<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        Raw(bytes)
    }
}
