//! A damaged segment file is refused with the file and the section named:
//! truncation at every section boundary, bit flips in every section, wrong
//! magic, unknown versions. Never a panic, never rows.

mod common;

use arrow::buffer::Buffer;
use sluice_segments::{ConsumingSegment, FORMAT_VERSION, Section, Segment, SegmentError, seal};

const FOOTER_LEN: usize = 96;

fn image() -> Vec<u8> {
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let mut segment = ConsumingSegment::new(common::clickstream_schema(Some("country")), 1, 0);
            common::fill(&mut segment, 3_000, 5);
            seal(&segment, "clicks__1__0__20261125T1000Z", 0).unwrap().bytes
        })
        .clone()
}

/// Section byte ranges (header, data, index, metadata, footer) from the footer.
fn sections(bytes: &[u8]) -> Vec<(Section, std::ops::Range<usize>)> {
    let footer = bytes.len() - FOOTER_LEN;
    let mut out = Vec::new();
    for (i, section) in [Section::Header, Section::Data, Section::Index, Section::Metadata].into_iter().enumerate() {
        let at = footer + i * 20;
        let start = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap()) as usize;
        out.push((section, start..start + len));
    }
    out.push((Section::Footer, footer..bytes.len()));
    out
}

fn open(bytes: Vec<u8>) -> Result<Segment, SegmentError> {
    Segment::from_buffer("seg.bin", Buffer::from_vec(bytes))
}

#[test]
fn the_intact_image_opens() {
    let segment = open(image()).unwrap();
    assert_eq!(segment.num_rows(), 3_000);
}

#[test]
fn truncation_at_every_section_boundary_is_detected() {
    let bytes = image();
    let mut cuts: Vec<usize> = sections(&bytes).iter().flat_map(|(_, r)| [r.start, r.end]).collect();
    cuts.extend([0, 1, 7, bytes.len() - 1, bytes.len() - 8, bytes.len() / 2]);
    cuts.retain(|&c| c < bytes.len());
    for cut in cuts {
        let error = open(bytes[..cut].to_vec()).expect_err("a truncated file must be refused");
        assert!(matches!(error, SegmentError::Corrupt { section: Section::Footer, .. }), "cut at {cut}: {error}");
        assert!(error.to_string().starts_with("seg.bin: footer: "), "{error}");
    }
}

#[test]
fn bit_flips_in_every_section_are_detected() {
    let bytes = image();
    let mut rng = common::Rng(0x5eed);
    for (section, range) in sections(&bytes) {
        let positions: Vec<usize> = (0..200).map(|_| range.start + rng.below(range.len() as u64) as usize).collect();
        for pos in positions.into_iter().chain([range.start, range.end - 1]) {
            let mut damaged = bytes.clone();
            damaged[pos] ^= 1 << rng.below(8);
            let error = open(damaged).expect_err("a flipped bit must be refused");
            let reported = match &error {
                SegmentError::Corrupt { section, .. } => *section,
                SegmentError::UnsupportedVersion { .. } => Section::Footer,
                other => panic!("byte {pos} in {section}: unexpected error {other}"),
            };
            // A flip in the footer's table may be reported as the section it
            // now points at wrongly; anywhere else, exactly that section.
            if section != Section::Footer {
                assert_eq!(reported, section, "byte {pos}: {error}");
            }
        }
    }
}

#[test]
fn wrong_magic_and_unknown_versions_are_named() {
    let bytes = image();
    let mut not_ours = bytes.clone();
    let len = not_ours.len();
    not_ours[len - 8..].copy_from_slice(b"PAR1PAR1");
    let error = open(not_ours).unwrap_err();
    assert!(error.to_string().contains("not a sluice segment file"), "{error}");

    // A future version with valid checksums: refused by version, not by CRC.
    let mut future = bytes.clone();
    let footer = len - FOOTER_LEN;
    future[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let header_crc = crc32c::crc32c(&future[..64]);
    future[footer + 16..footer + 20].copy_from_slice(&header_crc.to_le_bytes());
    future[footer + 80..footer + 84].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let footer_crc = crc32c::crc32c(&future[footer..footer + 84]);
    future[footer + 84..footer + 88].copy_from_slice(&footer_crc.to_le_bytes());
    match open(future).unwrap_err() {
        SegmentError::UnsupportedVersion { found, supported, .. } => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION))
        }
        other => panic!("expected an unsupported-version error, got {other}"),
    }
}

#[test]
fn a_corrupt_file_on_disk_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clicks__1__0.seg");
    let mut segment = ConsumingSegment::new(common::clickstream_schema(None), 1, 0);
    common::fill(&mut segment, 500, 9);
    let image = seal(&segment, "clicks__1__0", 0).unwrap();
    image.write_file(&path).unwrap();
    assert_eq!(Segment::open(&path).unwrap().num_rows(), 500);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");

    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let error = Segment::open(&path).unwrap_err();
    assert!(error.to_string().starts_with(&format!("{}: data section: checksum mismatch", path.display())), "{error}");
    assert!(Segment::open(&dir.path().join("missing.seg")).is_err());
}

#[test]
fn a_trusted_open_still_checks_footer_header_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.seg");
    let bytes = image();
    std::fs::write(&path, &bytes).unwrap();
    // SAFETY: the file is an intact image written by this crate.
    let trusted = unsafe { Segment::open_trusted(&path) }.unwrap();
    assert_eq!(trusted.to_record_batch().unwrap(), open(bytes.clone()).unwrap().to_record_batch().unwrap());
    for (section, range) in sections(&bytes) {
        if matches!(section, Section::Data | Section::Index) {
            continue;
        }
        let mut damaged = bytes.clone();
        damaged[range.start + range.len() / 2] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap();
        // SAFETY: only a checked section (footer, header, metadata) is damaged.
        assert!(unsafe { Segment::open_trusted(&path) }.is_err(), "damage in the {section} is still refused");
    }
}

/// Recomputes every section checksum and the footer's, as an attacker
/// writing a file with valid checksums would.
fn rechecksum(bytes: &mut [u8]) {
    let footer = bytes.len() - FOOTER_LEN;
    for (i, (_, range)) in sections(bytes).into_iter().take(4).enumerate() {
        let crc = crc32c::crc32c(&bytes[range]);
        let at = footer + i * 20 + 16;
        bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes[footer..bytes.len() - 12]);
    let at = bytes.len() - 12;
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Valid checksums do not make valid Arrow data: every data-section byte
/// flipped in turn (with checksums recomputed) is refused or decodes to
/// arrays that passed Arrow's validation — never a crash when read.
#[test]
fn forged_data_with_valid_checksums_is_validated() {
    let bytes = image();
    let data = sections(&bytes)[1].1.clone();
    let mut refused = 0;
    for at in (data.start..data.end).step_by(53) {
        let mut forged = bytes.clone();
        forged[at] ^= 0xa5;
        rechecksum(&mut forged);
        match open(forged) {
            Err(e) => {
                assert!(e.to_string().contains("data section"), "{e}");
                refused += 1;
            }
            // Validated: reading every row is safe.
            Ok(segment) => drop(segment.to_record_batch()),
        }
    }
    assert!(refused > 0, "some forged bytes break the Arrow structure");
}

/// A file written by the previous format (version 1, before star-trees),
/// kept as bytes: it opens and reads the rows the same data seals to today.
#[test]
fn a_file_of_the_previous_format_version_still_reads() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1.segment")).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1, "the fixture is a version 1 file");
    let old = open(bytes).unwrap();
    assert_eq!((old.meta().format_version, old.num_rows()), (1, 200));
    assert!(old.star_trees().is_empty());
    let mut segment = ConsumingSegment::new(common::clickstream_schema(Some("ts")), 1, 0);
    common::fill(&mut segment, 200, 7);
    let new = open(seal(&segment, "clicks__1__0__20261201T1600Z", 0).unwrap().bytes).unwrap();
    assert_eq!(new.meta().format_version, FORMAT_VERSION);
    assert_eq!(old.to_record_batch().unwrap(), new.to_record_batch().unwrap());
}

/// A star-tree with valid checksums but forged bytes (every byte of the
/// index section flipped in turn) is refused, or walks in bounds: the
/// structure checks hold whatever the bytes say.
#[test]
fn forged_star_trees_are_refused_or_stay_in_bounds() {
    let mut segment = ConsumingSegment::new(common::star_tree_schema(4), 1, 0);
    common::fill(&mut segment, 2_000, 3);
    let bytes = seal(&segment, "clicks__1__0__20261201T1600Z", 0).unwrap().bytes;
    let index = sections(&bytes)[2].1.clone();
    let columns: Vec<usize> = open(bytes.clone()).unwrap().star_trees()[0].spec().dimensions.clone();
    let mut refused = 0;
    for at in index.step_by(7) {
        let mut forged = bytes.clone();
        forged[at] ^= 0x5a;
        rechecksum(&mut forged);
        match open(forged) {
            Err(e) => {
                assert!(e.to_string().contains("index section"), "{e}");
                refused += 1;
            }
            Ok(segment) => {
                for tree in segment.star_trees() {
                    for used in [&columns[..], &columns[..1], &[]] {
                        let _ = tree.select(used, None);
                    }
                }
            }
        }
    }
    assert!(refused > 0, "some forged bytes break the tree's structure");
}

mod no_panic {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Arbitrary bytes are an error, never a panic.
        #[test]
        fn garbage_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            prop_assert!(open(bytes).is_err());
        }

        /// Several damaged bytes at once, anywhere, are still refused.
        #[test]
        fn multiple_damage_is_refused(damage in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8)) {
            let mut bytes = image();
            for (index, xor) in damage {
                let i = index.index(bytes.len());
                bytes[i] ^= xor;
            }
            prop_assert!(open(bytes).is_err());
        }
    }
}
