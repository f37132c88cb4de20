//! The configured field paths as a trie, and which of a node's keys an
//! object has named (for duplicate detection).

use std::borrow::Cow;

/// A key with its first eight bytes as an integer: compared with a node's
/// children by integer compares, the bytes only when prefix and length
/// match and the key is longer.
#[derive(Debug, Clone)]
pub(crate) struct Key<'a> {
    prefix: u64,
    pub text: Cow<'a, str>,
}

impl<'a> Key<'a> {
    pub(crate) fn new(text: Cow<'a, str>) -> Self {
        Self { prefix: prefix_of(text.as_bytes()), text }
    }

    fn matches(&self, prefix: u64, text: &str) -> bool {
        self.prefix == prefix && self.text.len() == text.len() && (text.len() <= 8 || self.text == text)
    }
}

/// The first eight bytes of a key, zero-padded, as one integer. Built in a
/// register: copying a short key into a stack buffer and loading it as one
/// word stalls on store forwarding, once per key of every record.
fn prefix_of(key: &[u8]) -> u64 {
    match key.first_chunk::<8>() {
        Some(eight) => u64::from_le_bytes(*eight),
        None => key.iter().rev().fold(0, |word, &b| word << 8 | u64::from(b)),
    }
}

/// A node of the field-path trie.
#[derive(Debug, Default)]
pub(crate) struct PathNode {
    /// Columns whose path ends here.
    pub columns: Vec<usize>,
    /// Sorted by name.
    children: Vec<PathChild>,
}

#[derive(Debug)]
struct PathChild {
    key: Key<'static>,
    node: PathNode,
}

impl PathNode {
    /// Up to this many children are scanned; more are binary-searched.
    const SCAN: usize = 16;

    pub(crate) fn is_leaf(&self) -> bool {
        self.children.is_empty()
    }

    /// The child named `key`, with its index among the children.
    #[inline]
    pub(crate) fn child(&self, key: &Key<'_>) -> Option<(usize, &PathNode)> {
        let i = if self.children.len() > Self::SCAN {
            self.children.binary_search_by(|c| c.key.text.as_ref().cmp(&key.text)).ok()?
        } else {
            self.children.iter().position(|c| c.key.matches(key.prefix, &key.text))?
        };
        Some((i, &self.children[i].node))
    }

    /// The trie of every column's field path in `pipeline`'s schema.
    pub(crate) fn of_columns(pipeline: &sluice_config::PipelineConfig) -> Self {
        let mut root = Self::default();
        for (i, column) in pipeline.schema.columns.iter().enumerate() {
            root.insert(column.field_path()).columns.push(i);
        }
        root
    }

    /// The child named `name`, if any (not on a hot path).
    pub(crate) fn named(&self, name: &str) -> Option<&PathNode> {
        self.child(&Key::new(Cow::Borrowed(name))).map(|(_, node)| node)
    }

    /// The node at `path` below this one, created as needed.
    pub(crate) fn insert<'p>(&mut self, path: impl IntoIterator<Item = &'p str>) -> &mut PathNode {
        let mut node = self;
        for name in path {
            let i = match node.children.binary_search_by(|c| c.key.text.as_ref().cmp(name)) {
                Ok(i) => i,
                Err(i) => {
                    let key = Key::new(Cow::Owned(name.to_string()));
                    node.children.insert(i, PathChild { key, node: PathNode::default() });
                    i
                }
            };
            node = &mut node.children[i].node;
        }
        node
    }
}

/// Which of a node's children one object has named so far: a key the
/// schema reads that appears twice makes the record ambiguous (which value
/// is the column's?). Keys nothing reads are not tracked: they cannot change
/// the row, and tracking them would cost every key a comparison with every
/// other.
pub(crate) struct Named {
    bits: u64,
    more: Vec<u64>,
}

impl Named {
    pub(crate) fn new(node: &PathNode) -> Self {
        Self { bits: 0, more: vec![0; node.children.len().saturating_sub(1) / 64] }
    }

    /// Records child `i`; false when the object already named it.
    pub(crate) fn insert(&mut self, i: usize) -> bool {
        let word = if i < 64 { &mut self.bits } else { &mut self.more[i / 64 - 1] };
        let bit = 1u64 << (i % 64);
        let new = *word & bit == 0;
        *word |= bit;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_child_is_named_once() {
        for children in [1usize, 64, 65, 200] {
            let mut node = PathNode::default();
            for i in 0..children {
                node.insert([format!("c{i}").as_str()]);
            }
            let mut named = Named::new(&node);
            assert!((0..children).all(|i| named.insert(i)));
            assert!((0..children).all(|i| !named.insert(i)), "{children} children");
        }
    }

    #[test]
    fn children_are_found_by_scan_and_by_search() {
        let mut root = PathNode::default();
        let names: Vec<String> = (0..40).map(|i| format!("field_{i:02}_long_name")).collect();
        for (i, name) in names.iter().enumerate() {
            root.insert([name.as_str()]).columns.push(i);
        }
        for (i, name) in names.iter().enumerate() {
            let (at, child) = root.child(&Key::new(Cow::Borrowed(name))).unwrap();
            assert_eq!((at, &child.columns), (i, &vec![i]));
        }
        assert!(root.child(&Key::new(Cow::Borrowed("field_00_long_nam"))).is_none());
        let mut small = PathNode::default();
        small.insert(["a", "b"]).columns.push(0);
        assert!(small.child(&Key::new(Cow::Borrowed("a"))).unwrap().1.child(&Key::new(Cow::Borrowed("b"))).is_some());
        assert!(small.child(&Key::new(Cow::Borrowed("b"))).is_none());
    }
}
