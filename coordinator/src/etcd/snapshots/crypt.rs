//! Encryption at rest of every snapshot haop writes, in the state dir and on the hosts.
//!
//! Why: a snapshot is the whole keyspace, every Kubernetes Secret in it. A file mode protects
//! it on the coordinator's disk only while nobody copies it; the copies kept on other hosts
//! (see [`super::copies`]) are read by nobody but haop, yet sit on machines whose disks are
//! backed up, imaged and replaced. So every snapshot file is ciphertext under one key that
//! lives in the state dir beside the CAs (`<state-dir>/secrets/snapshot.key`, 32 random bytes,
//! mode 0600, created on first use) and that no host ever sees. **Back it up with the CAs**: a
//! copy of a snapshot is worth nothing without it (README "Snapshots").
//!
//! Why AES-256-GCM from `aws-lc-rs`: it is already in the tree (rcgen, rustls and the
//! enrollment signature use it), it is FIPS-validated, and hardware AES makes a 2 GiB snapshot
//! cost about a second. age/rage would add a crate family for the same primitive.
//!
//! Why segments: a snapshot is gigabytes; one GCM message would have to be held in memory
//! to be checked before any byte is used. Instead the plaintext is cut into segments of
//! [`SEGMENT`] bytes (1 MiB), each sealed on its own, so a snapshot streams through in constant
//! memory and every byte handed on has been authenticated. The nonce of each segment carries
//! its position and whether it is the last, so a segment moved, dropped, repeated or cut off,
//! and a file truncated at a segment boundary, all fail to open (the STREAM construction of
//! Hoang, Reyhanitabar, Rogaway and Vizár, as age and Tink use it).
//!
//! # Format, version 1
//!
//! ```text
//! header (32 bytes, also the associated data of every segment)
//!   0  8  magic "HAOPSNAP"
//!   8  1  version, 1
//!   9  1  0 (reserved)
//!  10  4  segment size in plaintext bytes, big endian (1 MiB)
//!  14  8  key id: the first 8 bytes of SHA-256("haop snapshot key" || key)
//!  22  7  nonce prefix, random per file
//!  29  3  0 (reserved)
//! segments, one after another
//!   AES-256-GCM(key, nonce, aad = header, plaintext) = ciphertext || 16-byte tag
//!   nonce (12 bytes) = prefix (7) || segment counter u32 big endian (4) || last flag (1: 0 or 1)
//! ```
//!
//! Every segment but the last holds exactly the segment size; the last holds fewer bytes
//! (possibly none), so its length says it is the last and its flag must agree. An empty
//! plaintext is one empty last segment. The key id tells "another key" from "corrupt".
//!
//! Lifecycle: [`SnapshotKey::load_or_create`] when haop writes a snapshot, [`SnapshotKey::load`]
//! when it reads one (a missing key is then an error naming the file to restore from backup);
//! [`Encryptor`] wraps the writer a snapshot streams into, [`Decryptor`] hands back plaintext
//! segments one at a time, each authenticated before it is returned.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::{Digest, Sha256};

/// The first bytes of every file in this format.
pub const MAGIC: &[u8; 8] = b"HAOPSNAP";
/// The format version written.
pub const VERSION: u8 = 1;
/// Plaintext bytes per segment.
pub const SEGMENT: usize = 1024 * 1024;
/// Bytes of the header.
pub const HEADER_LEN: usize = 32;
/// Bytes of a GCM tag.
const TAG_LEN: usize = 16;
/// Largest segment size a file may declare (a larger one would make a reader allocate it).
const MAX_SEGMENT: usize = 64 * 1024 * 1024;
/// Where the key lives in the state dir.
pub const KEY_FILE: &str = "secrets/snapshot.key";

/// Errors of the format and of the key; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error(
        "the snapshot key {} is missing: snapshots of this state dir cannot be read without it; \
         restore it from the backup kept with the CAs",
        .path.display()
    )]
    KeyMissing { path: PathBuf },
    #[error("the snapshot key {} is not 32 bytes (it is {len})", .path.display())]
    KeyInvalid { path: PathBuf, len: usize },
    #[error("cannot {op} the snapshot key {}", .path.display())]
    KeyIo {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a random key or nonce")]
    Random,
    #[error("{what} is not a haop encrypted snapshot (no HAOPSNAP header)")]
    NotEncrypted { what: String },
    #[error("{what} has format version {version}; this haop reads version {VERSION}")]
    Version { what: String, version: u8 },
    #[error("{what} declares segments of {size} bytes, more than a haop snapshot has")]
    SegmentSize { what: String, size: usize },
    #[error(
        "{what} was encrypted with another key (id {file_key}); this state dir's key is {our_key}"
    )]
    WrongKey {
        what: String,
        file_key: String,
        our_key: String,
    },
    #[error(
        "{what} is corrupt: segment {segment} (plaintext bytes from {offset}) fails \
         authentication (flipped, reordered or replaced bytes)"
    )]
    Corrupt {
        what: String,
        segment: u32,
        offset: u64,
    },
    #[error(
        "{what} is truncated: it ends after {offset} plaintext bytes without its last segment"
    )]
    Truncated { what: String, offset: u64 },
    #[error("{what} has more segments than the format counts")]
    TooLong { what: String },
    #[error("cannot {op} {what}")]
    Io {
        op: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The state dir's snapshot key. Its bytes are never printed (its [`id`](Self::id) is).
#[derive(Clone)]
pub struct SnapshotKey {
    bytes: [u8; 32],
}

impl fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// `<state-dir>/secrets/snapshot.key`.
pub fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join(KEY_FILE)
}

impl SnapshotKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> SnapshotKey {
        SnapshotKey { bytes }
    }

    /// The state dir's key; an error naming the file when it is missing or malformed.
    pub fn load(state_dir: &Path) -> Result<SnapshotKey, CryptError> {
        let path = key_path(state_dir);
        let raw = match std::fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CryptError::KeyMissing { path })
            }
            Err(source) => {
                return Err(CryptError::KeyIo {
                    op: "read",
                    path,
                    source,
                })
            }
        };
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| CryptError::KeyInvalid {
                path: path.clone(),
                len: raw.len(),
            })?;
        Ok(SnapshotKey { bytes })
    }

    /// The state dir's key, created (32 random bytes, 0600, in a 0700 `secrets/`) when there is
    /// none yet. Two processes creating it at once agree: the second reads the first's.
    pub fn load_or_create(state_dir: &Path) -> Result<SnapshotKey, CryptError> {
        match Self::load(state_dir) {
            Err(CryptError::KeyMissing { path }) => {
                let io = |op| {
                    let path = path.clone();
                    move |e: crate::fsio::FsioError| CryptError::KeyIo {
                        op,
                        path,
                        source: std::io::Error::other(crate::error_chain(&e)),
                    }
                };
                if let Some(dir) = path.parent() {
                    crate::fsio::create_private_dir(dir).map_err(io("create the directory of"))?;
                }
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|_| CryptError::Random)?;
                match crate::fsio::write_new(&path, &bytes, crate::fsio::PRIVATE_MODE) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "snapshot key created");
                        Ok(SnapshotKey { bytes })
                    }
                    Err(crate::fsio::FsioError::Exists { .. }) => Self::load(state_dir),
                    Err(e) => Err(io("write")(e)),
                }
            }
            other => other,
        }
    }

    /// The key's public name: hex of the first 8 bytes of SHA-256("haop snapshot key" || key).
    pub fn id(&self) -> String {
        hex::encode(self.id_bytes())
    }

    fn id_bytes(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"haop snapshot key");
        h.update(self.bytes);
        let d = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        id
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.bytes).expect("a 32-byte key"))
    }
}

fn nonce(prefix: &[u8; 7], counter: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// Streams plaintext into the format. Write everything, then [`finish`](Self::finish): a
/// dropped encryptor leaves a file without its last segment, which never decrypts.
pub struct Encryptor<W: Write> {
    out: W,
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    prefix: [u8; 7],
    counter: u32,
    segment: usize,
    buf: Vec<u8>,
    what: String,
}

impl<W: Write> fmt::Debug for Encryptor<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("what", &self.what)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Encryptor<W> {
    /// Writes the header to `out`; `what` names the destination in errors.
    pub fn new(key: &SnapshotKey, out: W, what: &str) -> Result<Self, CryptError> {
        Self::with_segment(key, out, what, SEGMENT)
    }

    /// [`new`](Self::new) with another segment size (tests cross boundaries with small ones).
    pub fn with_segment(
        key: &SnapshotKey,
        mut out: W,
        what: &str,
        segment: usize,
    ) -> Result<Self, CryptError> {
        assert!(segment > 0 && segment <= MAX_SEGMENT, "segment size");
        let mut prefix = [0u8; 7];
        getrandom::fill(&mut prefix).map_err(|_| CryptError::Random)?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8] = VERSION;
        header[10..14].copy_from_slice(&(segment as u32).to_be_bytes());
        header[14..22].copy_from_slice(&key.id_bytes());
        header[22..29].copy_from_slice(&prefix);
        out.write_all(&header).map_err(|source| CryptError::Io {
            op: "write",
            what: what.to_string(),
            source,
        })?;
        Ok(Encryptor {
            out,
            key: key.aead(),
            header,
            prefix,
            counter: 0,
            segment,
            buf: Vec::with_capacity(segment + TAG_LEN),
            what: what.to_string(),
        })
    }

    /// Encrypts `data`, writing each segment as soon as it is full.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), CryptError> {
        while !data.is_empty() {
            let take = (self.segment - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.segment {
                self.seal(false)?;
            }
        }
        Ok(())
    }

    fn seal(&mut self, last: bool) -> Result<(), CryptError> {
        let n = nonce(&self.prefix, self.counter, last);
        let tag = self
            .key
            .seal_in_place_separate_tag(n, Aad::from(&self.header), &mut self.buf)
            .map_err(|_| CryptError::TooLong {
                what: self.what.clone(),
            })?;
        self.buf.extend_from_slice(tag.as_ref());
        self.out
            .write_all(&self.buf)
            .map_err(|source| CryptError::Io {
                op: "write",
                what: self.what.clone(),
                source,
            })?;
        self.buf.clear();
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| CryptError::TooLong {
                what: self.what.clone(),
            })?;
        Ok(())
    }

    /// Seals the last segment and answers the writer (not flushed to disk: the caller fsyncs).
    pub fn finish(mut self) -> Result<W, CryptError> {
        self.seal(true)?;
        self.out.flush().map_err(|source| CryptError::Io {
            op: "flush",
            what: self.what.clone(),
            source,
        })?;
        Ok(self.out)
    }
}

/// Reads the format back: [`next_segment`](Self::next_segment) answers each segment's plaintext
/// once it is authenticated, and `None` after the last one. A segment is read whole (the size
/// the header declares, or less at the end of the file), so bytes added after the last
/// segment make it fail to open.
pub struct Decryptor<R: Read> {
    input: R,
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    prefix: [u8; 7],
    counter: u32,
    segment: usize,
    offset: u64,
    done: bool,
    buf: Vec<u8>,
    what: String,
}

impl<R: Read> fmt::Debug for Decryptor<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("what", &self.what)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// Reads until `buf` is full or the input ends; answers how much was read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What a header says, without a key: whether a file is in this format, and under which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub segment: usize,
    pub key_id: String,
}

/// Parses a header; `what` names the file in errors.
pub fn parse_header(header: &[u8], what: &str) -> Result<Header, CryptError> {
    if header.len() < HEADER_LEN || &header[..8] != MAGIC {
        return Err(CryptError::NotEncrypted {
            what: what.to_string(),
        });
    }
    if header[8] != VERSION {
        return Err(CryptError::Version {
            what: what.to_string(),
            version: header[8],
        });
    }
    let segment = u32::from_be_bytes(header[10..14].try_into().expect("4 bytes")) as usize;
    if segment == 0 || segment > MAX_SEGMENT {
        return Err(CryptError::SegmentSize {
            what: what.to_string(),
            size: segment,
        });
    }
    Ok(Header {
        version: header[8],
        segment,
        key_id: hex::encode(&header[14..22]),
    })
}

impl<R: Read> Decryptor<R> {
    /// Reads and checks the header (format, version, key).
    pub fn new(key: &SnapshotKey, mut input: R, what: &str) -> Result<Self, CryptError> {
        let io = |source| CryptError::Io {
            op: "read",
            what: what.to_string(),
            source,
        };
        let mut header = [0u8; HEADER_LEN];
        let n = read_full(&mut input, &mut header).map_err(io)?;
        let parsed = parse_header(&header[..n], what)?;
        if parsed.key_id != key.id() {
            return Err(CryptError::WrongKey {
                what: what.to_string(),
                file_key: parsed.key_id,
                our_key: key.id(),
            });
        }
        let mut prefix = [0u8; 7];
        prefix.copy_from_slice(&header[22..29]);
        Ok(Decryptor {
            input,
            key: key.aead(),
            header,
            prefix,
            counter: 0,
            segment: parsed.segment,
            offset: 0,
            done: false,
            buf: vec![0u8; parsed.segment + TAG_LEN],
            what: what.to_string(),
        })
    }

    /// The next segment's plaintext, authenticated; `None` once the last has been returned.
    pub fn next_segment(&mut self) -> Result<Option<&[u8]>, CryptError> {
        if self.done {
            return Ok(None);
        }
        let io = |what: &str| {
            let what = what.to_string();
            move |source| CryptError::Io {
                op: "read",
                what,
                source,
            }
        };
        self.buf.resize(self.segment + TAG_LEN, 0);
        let n = read_full(&mut self.input, &mut self.buf).map_err(io(&self.what))?;
        let last = n < self.segment + TAG_LEN;
        if n < TAG_LEN {
            return Err(CryptError::Truncated {
                what: self.what.clone(),
                offset: self.offset,
            });
        }
        self.buf.truncate(n);
        let nonce = nonce(&self.prefix, self.counter, last);
        let plain_len = match self
            .key
            .open_in_place(nonce, Aad::from(&self.header), &mut self.buf)
        {
            Ok(p) => p.len(),
            Err(_) => {
                return Err(CryptError::Corrupt {
                    what: self.what.clone(),
                    segment: self.counter,
                    offset: self.offset,
                })
            }
        };
        self.buf.truncate(plain_len);
        self.offset += plain_len as u64;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| CryptError::TooLong {
                what: self.what.clone(),
            })?;
        self.done = last;
        Ok(Some(&self.buf))
    }

    /// Plaintext bytes returned so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Whether the file at `path` starts with this format's magic.
pub fn is_encrypted(path: &Path) -> bool {
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| read_full(&mut f, &mut head))
        .is_ok_and(|n| n == 8 && &head == MAGIC)
}

/// Decrypts `src` into `out` (every byte authenticated before it is written), answering the
/// plaintext's SHA-256 (hex) and size.
pub fn decrypt_to<W: Write>(
    key: &SnapshotKey,
    src: &Path,
    out: &mut W,
) -> Result<(String, u64), CryptError> {
    let what = src.display().to_string();
    let file = std::fs::File::open(src).map_err(|source| CryptError::Io {
        op: "open",
        what: what.clone(),
        source,
    })?;
    let mut d = Decryptor::new(key, std::io::BufReader::new(file), &what)?;
    let mut hasher = Sha256::new();
    while let Some(seg) = d.next_segment()? {
        hasher.update(seg);
        out.write_all(seg).map_err(|source| CryptError::Io {
            op: "write the plaintext of",
            what: what.clone(),
            source,
        })?;
    }
    Ok((hex::encode(hasher.finalize()), d.offset()))
}

/// Checks that `src` decrypts whole under `key`, answering the plaintext's SHA-256 and size
/// (nothing is written anywhere).
pub fn check(key: &SnapshotKey, src: &Path) -> Result<(String, u64), CryptError> {
    decrypt_to(key, src, &mut std::io::sink())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SnapshotKey {
        SnapshotKey::from_bytes([b; 32])
    }

    fn seal(k: &SnapshotKey, plain: &[u8], segment: usize) -> Vec<u8> {
        let mut e = Encryptor::with_segment(k, Vec::new(), "test", segment).unwrap();
        // In odd pieces, so writes straddle segment boundaries.
        for piece in plain.chunks(7) {
            e.write(piece).unwrap();
        }
        e.finish().unwrap()
    }

    fn open(k: &SnapshotKey, file: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut d = Decryptor::new(k, file, "test")?;
        let mut out = Vec::new();
        while let Some(s) = d.next_segment()? {
            out.extend_from_slice(s);
        }
        Ok(out)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_and_around_segment_boundaries() {
        let k = key(1);
        let seg = 64;
        for n in [
            0,
            1,
            seg - 1,
            seg,
            seg + 1,
            2 * seg,
            2 * seg + 1,
            5 * seg - 3,
        ] {
            let plain = data(n);
            let file = seal(&k, &plain, seg);
            // Header, full segments, and a short last one (empty when n is a multiple).
            assert_eq!(
                file.len(),
                HEADER_LEN + plain.len() + (n / seg + 1) * TAG_LEN,
                "{n}"
            );
            assert_eq!(open(&k, &file).unwrap(), plain, "{n}");
        }
        // The real segment size too.
        let plain = data(SEGMENT * 2 + 5);
        assert_eq!(open(&k, &seal(&k, &plain, SEGMENT)).unwrap(), plain);
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let k = key(2);
        let file = seal(&k, &data(200), 64);
        for i in (0..file.len()).step_by(3) {
            let mut bad = file.clone();
            bad[i] ^= 0x10;
            assert!(open(&k, &bad).is_err(), "byte {i} flipped");
        }
        let mut bad = file.clone();
        bad[HEADER_LEN + (64 + TAG_LEN) + 6] ^= 1;
        assert!(
            matches!(
                open(&k, &bad),
                Err(CryptError::Corrupt {
                    segment: 1,
                    offset: 64,
                    ..
                })
            ),
            "{:?}",
            open(&k, &bad)
        );
    }

    #[test]
    fn truncated_files_are_refused_even_at_a_segment_boundary() {
        let k = key(3);
        let seg = 64;
        let file = seal(&k, &data(3 * seg + 10), seg);
        let boundary = HEADER_LEN + 2 * (seg + TAG_LEN);
        for cut in [
            file.len() - 1,
            file.len() - TAG_LEN,
            boundary,
            boundary + 5,
            HEADER_LEN,
            HEADER_LEN - 1,
            3,
        ] {
            let r = open(&k, &file[..cut]);
            assert!(r.is_err(), "cut at {cut}: {r:?}");
        }
        assert!(matches!(
            open(&k, &file[..boundary]),
            Err(CryptError::Truncated { offset: 128, .. })
        ));
        // An empty plaintext is one empty last segment; without it the file is truncated.
        let empty = seal(&k, b"", seg);
        assert_eq!(open(&k, &empty).unwrap(), b"");
        assert!(matches!(
            open(&k, &empty[..HEADER_LEN]),
            Err(CryptError::Truncated { .. })
        ));
        // Extra bytes after the last segment make it another length: it fails to open.
        let mut long = file.clone();
        long.push(0);
        assert!(matches!(open(&k, &long), Err(CryptError::Corrupt { .. })));
    }

    #[test]
    fn reordered_repeated_or_dropped_segments_are_refused() {
        let k = key(4);
        let seg = 64;
        let file = seal(&k, &data(4 * seg + 9), seg);
        let s = seg + TAG_LEN;
        let part = |i: usize| &file[HEADER_LEN + i * s..HEADER_LEN + (i + 1) * s];
        let head = &file[..HEADER_LEN];
        let tail = &file[HEADER_LEN + 4 * s..];
        let build = |order: &[usize]| {
            let mut v = head.to_vec();
            for &i in order {
                v.extend_from_slice(part(i));
            }
            v.extend_from_slice(tail);
            v
        };
        assert_eq!(open(&k, &build(&[0, 1, 2, 3])).unwrap(), data(4 * seg + 9));
        for order in [&[1, 0, 2, 3][..], &[0, 1, 3, 2], &[0, 1, 1, 3], &[0, 1, 2]] {
            assert!(open(&k, &build(order)).is_err(), "{order:?}");
        }
        // A segment from another file under the same key (another nonce prefix).
        let other = seal(&k, &data(4 * seg + 9), seg);
        let mut mixed = file.clone();
        mixed[HEADER_LEN + s..HEADER_LEN + 2 * s]
            .copy_from_slice(&other[HEADER_LEN + s..HEADER_LEN + 2 * s]);
        assert!(open(&k, &mixed).is_err());
    }

    #[test]
    fn another_key_or_no_header_is_named() {
        let file = seal(&key(5), b"secret", 64);
        let err = open(&key(6), &file).unwrap_err();
        assert!(matches!(err, CryptError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains(&key(6).id()), "{err}");
        let err = open(&key(5), b"\x00\x01plain bolt db").unwrap_err();
        assert!(matches!(err, CryptError::NotEncrypted { .. }), "{err}");
        let mut v2 = file.clone();
        v2[8] = 2;
        assert!(matches!(
            open(&key(5), &v2),
            Err(CryptError::Version { version: 2, .. })
        ));
    }

    #[test]
    fn the_key_is_created_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let err = SnapshotKey::load(dir.path()).unwrap_err();
        assert!(matches!(err, CryptError::KeyMissing { .. }), "{err}");
        assert!(err.to_string().contains("backup"), "{err}");
        let a = SnapshotKey::load_or_create(dir.path()).unwrap();
        let b = SnapshotKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id(), b.id());
        let meta = std::fs::metadata(key_path(dir.path())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let secrets = std::fs::metadata(dir.path().join("secrets")).unwrap();
        assert_eq!(secrets.permissions().mode() & 0o777, 0o700);
        assert!(!format!("{a:?}").contains(&hex::encode(a.bytes)));
    }
}
