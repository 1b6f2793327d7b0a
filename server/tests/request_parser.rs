//! Property and stress tests for the RESP request parser, through its public API only.
//!
//! The properties: (1) a stream of valid, refused and skipped requests, cut at arbitrary
//! points, yields exactly the expected outcomes in order; (2) no input, however hostile,
//! panics, and the buffer never holds more than one request's worth of bytes; (3) nothing
//! is quadratic or recursive.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fencelock_server::resp::request::{Parsed, RequestError, RequestLimits, RequestParser};
use proptest::prelude::*;

/// Small limits, so that generated requests cross them often.
const LIMITS: RequestLimits = RequestLimits { bulk_bytes_max: 48, array_len_max: 6, inline_bytes_max: 96 };

/// The most a buffer may hold after `parse` returns `Ok(None)`: one incomplete request of
/// the largest size the limits allow (a count line, then `array_len_max` bulks of
/// `bulk_bytes_max` with their length lines), since refused requests are never buffered.
fn buffered_bytes_max(limits: &RequestLimits) -> usize {
    let length_line_bytes_max = 32;
    let multibulk = length_line_bytes_max + limits.array_len_max * (length_line_bytes_max + limits.bulk_bytes_max + 2);
    multibulk.max(limits.inline_bytes_max + 2)
}

/// One request in a generated stream.
#[derive(Debug, Clone)]
enum Item {
    /// A multibulk request within the limits.
    Multibulk(Vec<Vec<u8>>),
    /// A multibulk request with a bulk longer than the limit somewhere in it.
    BulkTooLong(Vec<Vec<u8>>),
    /// A multibulk request with more elements than the limit.
    ArrayTooLong(Vec<Vec<u8>>),
    /// An inline request: arguments, how each is quoted, blanks, terminator.
    Inline { args: Vec<(Vec<u8>, Quoting)>, blanks: Vec<&'static [u8]>, crlf: bool },
    /// An inline line of `len` bytes (over the limit or not).
    InlineLong { len: usize, crlf: bool },
    /// An inline line with an unterminated quote.
    Unbalanced,
    /// Something Redis ignores: an empty line, `*0`, `*-1`.
    Ignored(&'static [u8]),
}

#[derive(Debug, Clone, Copy)]
enum Quoting {
    Plain,
    Single,
    Double,
}

fn multibulk_bytes(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Encodes one inline argument; falls back to double quotes, which can carry any byte.
fn inline_arg_bytes(arg: &[u8], quoting: Quoting) -> Vec<u8> {
    let plain_ok = !arg.is_empty() && arg.iter().all(|&b| b.is_ascii_graphic() && !b"\"'*".contains(&b));
    let single_ok = arg.iter().all(|&b| b != 0 && b != b'\n' && b != b'\\');
    match quoting {
        Quoting::Plain if plain_ok => arg.to_vec(),
        Quoting::Single if single_ok => {
            let mut out = vec![b'\''];
            for &b in arg {
                if b == b'\'' {
                    out.extend_from_slice(b"\\'");
                } else {
                    out.push(b);
                }
            }
            out.push(b'\'');
            out
        }
        _ => {
            let mut out = vec![b'"'];
            for &b in arg {
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b if b.is_ascii_graphic() || b == b' ' => out.push(b),
                    b => out.extend_from_slice(format!("\\x{b:02X}").as_bytes()),
                }
            }
            out.push(b'"');
            out
        }
    }
}

fn terminator(crlf: bool) -> &'static [u8] {
    if crlf {
        b"\r\n"
    } else {
        b"\n"
    }
}

/// The bytes of an item and what the parser must make of them (`None`: nothing).
fn encode(item: &Item, limits: &RequestLimits) -> (Vec<u8>, Option<Parsed>) {
    let command = |args: &[Vec<u8>]| Parsed::Command(args.iter().map(|a| Bytes::copy_from_slice(a)).collect());
    match item {
        Item::Multibulk(args) => (multibulk_bytes(args), Some(command(args))),
        Item::BulkTooLong(args) => {
            let first_long = args.iter().find(|a| a.len() > limits.bulk_bytes_max).expect("one long bulk");
            let error = RequestError::BulkTooLong {
                bulk_bytes: first_long.len() as u64,
                bulk_bytes_max: limits.bulk_bytes_max,
            };
            (multibulk_bytes(args), Some(Parsed::Refused(error)))
        }
        Item::ArrayTooLong(args) => {
            let error =
                RequestError::ArrayTooLong { array_len: args.len() as u64, array_len_max: limits.array_len_max };
            (multibulk_bytes(args), Some(Parsed::Refused(error)))
        }
        Item::Inline { args, blanks, crlf } => {
            // blanks[0] leads, blanks[i] separates, the last one trails.
            let mut line = blanks[0].to_vec();
            for (i, (arg, quoting)) in args.iter().enumerate() {
                if i > 0 {
                    line.extend_from_slice(blanks[i]);
                }
                line.extend_from_slice(&inline_arg_bytes(arg, *quoting));
            }
            line.extend_from_slice(blanks[args.len()]);
            let expected = if line.len() > limits.inline_bytes_max {
                Parsed::Refused(RequestError::InlineTooLong {
                    inline_bytes: line.len() as u64,
                    inline_bytes_max: limits.inline_bytes_max,
                })
            } else {
                command(&args.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>())
            };
            line.extend_from_slice(terminator(*crlf));
            (line, Some(expected))
        }
        Item::InlineLong { len, crlf } => {
            let line: Vec<u8> = (0..*len).map(|i| if i % 7 == 6 { b' ' } else { b'a' }).collect();
            let expected = if *len > limits.inline_bytes_max {
                Parsed::Refused(RequestError::InlineTooLong {
                    inline_bytes: *len as u64,
                    inline_bytes_max: limits.inline_bytes_max,
                })
            } else {
                let words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
                Parsed::Command(words.map(Bytes::copy_from_slice).collect())
            };
            ([&line[..], terminator(*crlf)].concat(), if *len == 0 { None } else { Some(expected) })
        }
        Item::Unbalanced => (b"SET \"abc\r\n".to_vec(), Some(Parsed::Refused(RequestError::UnbalancedQuotes))),
        Item::Ignored(bytes) => (bytes.to_vec(), None),
    }
}

fn arg_bytes(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), len)
}

fn item() -> impl Strategy<Value = Item> {
    let quoting = prop_oneof![Just(Quoting::Plain), Just(Quoting::Single), Just(Quoting::Double)];
    let blank: BoxedStrategy<&'static [u8]> =
        prop_oneof![Just(&b" "[..]), Just(&b"\t"[..]), Just(&b"  "[..]), Just(&b" \t "[..])].boxed();
    let edge_blank: BoxedStrategy<&'static [u8]> = prop_oneof![Just(&b""[..]), blank.clone()].boxed();
    let inline = (prop::collection::vec((arg_bytes(0..=12), quoting), 1..=5), any::<bool>()).prop_flat_map(
        move |(args, crlf)| {
            let separators = prop::collection::vec(blank.clone(), args.len() - 1);
            (Just(args), edge_blank.clone(), separators, edge_blank.clone(), Just(crlf))
        },
    );
    let inline = inline.prop_map(|(args, lead, separators, trail, crlf)| {
        let mut blanks = vec![lead];
        blanks.extend(separators);
        blanks.push(trail);
        Item::Inline { args, blanks, crlf }
    });
    let bulk_too_long =
        (prop::collection::vec(arg_bytes(0..=48), 0..=5), arg_bytes(49..=300), any::<prop::sample::Index>()).prop_map(
            |(mut args, long, at)| {
                let at = at.index(args.len() + 1);
                args.insert(at, long);
                Item::BulkTooLong(args)
            },
        );
    prop_oneof![
        4 => prop::collection::vec(arg_bytes(0..=48), 1..=6).prop_map(Item::Multibulk),
        4 => inline,
        1 => bulk_too_long,
        1 => prop::collection::vec(arg_bytes(0..=60), 7..=20).prop_map(Item::ArrayTooLong),
        1 => (0usize..=300, any::<bool>()).prop_map(|(len, crlf)| Item::InlineLong { len, crlf }),
        1 => Just(Item::Unbalanced),
        1 => prop_oneof![
            Just(&b"\r\n"[..]),
            Just(&b"\n"[..]),
            Just(&b" \t \r\n"[..]),
            Just(&b"*0\r\n"[..]),
            Just(&b"*-1\r\n"[..]),
        ]
        .prop_map(Item::Ignored),
    ]
}

/// Chunk sizes to cut a stream with: mostly small, sometimes one byte, sometimes large.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![3 => 1usize..=8, 2 => 1usize..=64, 1 => 1usize..=1024], 1..=32)
}

/// Feeds `input` in chunks cycling through `sizes`, calling `parse` until `Ok(None)` after
/// each chunk, checking the buffer bound at every `Ok(None)`. Returns what came out and
/// the framing error, if any.
fn feed(limits: RequestLimits, input: &[u8], sizes: &[usize]) -> (Vec<Parsed>, Option<RequestError>) {
    let bound = buffered_bytes_max(&limits);
    let mut parser = RequestParser::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut sizes = sizes.iter().cycle();
    while at < input.len() {
        let n = (*sizes.next().unwrap()).min(input.len() - at);
        buf.extend_from_slice(&input[at..at + n]);
        at += n;
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(parsed)) => {
                    if let Parsed::Command(args) = &parsed {
                        assert!(!args.is_empty(), "a command has a name");
                    }
                    out.push(parsed);
                }
                Ok(None) => {
                    assert!(buf.len() <= bound, "buffer holds {} bytes, bound {bound}", buf.len());
                    break;
                }
                Err(error) => {
                    // Sticky: the stream is lost for good.
                    assert_eq!(parser.parse(&mut buf), Err(error.clone()));
                    return (out, Some(error));
                }
            }
        }
    }
    (out, None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_streams_parse_exactly_whatever_the_cuts(
        items in prop::collection::vec(item(), 1..=12),
        sizes in chunk_sizes(),
    ) {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for item in &items {
            let (bytes, outcome) = encode(item, &LIMITS);
            input.extend_from_slice(&bytes);
            expected.extend(outcome);
        }
        let (out, error) = feed(LIMITS, &input, &sizes);
        prop_assert_eq!(error, None);
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn default_limits_parse_valid_streams(items in prop::collection::vec(item(), 1..=8), sizes in chunk_sizes()) {
        // Under the default limits nothing generated is oversized except InlineLong > 64 KiB
        // (never generated), so every multibulk comes out as a command.
        let limits = RequestLimits::default();
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for item in &items {
            let item = match item {
                Item::BulkTooLong(args) | Item::ArrayTooLong(args) => Item::Multibulk(args.clone()),
                other => other.clone(),
            };
            let (bytes, outcome) = encode(&item, &limits);
            input.extend_from_slice(&bytes);
            expected.extend(outcome);
        }
        let (out, error) = feed(limits, &input, &sizes);
        prop_assert_eq!(error, None);
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..=2048), sizes in chunk_sizes()) {
        feed(LIMITS, &input, &sizes);
    }

    #[test]
    fn resp_shaped_noise_never_panics(fragments in prop::collection::vec(fragment(), 0..=200), sizes in chunk_sizes()) {
        feed(LIMITS, &fragments.concat(), &sizes);
    }

    #[test]
    fn garbage_after_valid_requests_never_panics(
        items in prop::collection::vec(item(), 0..=6),
        garbage in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..=512),
            prop::collection::vec(fragment(), 0..=100).prop_map(|f| f.concat()),
        ],
        sizes in chunk_sizes(),
    ) {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for item in &items {
            let (bytes, outcome) = encode(item, &LIMITS);
            input.extend_from_slice(&bytes);
            expected.extend(outcome);
        }
        input.extend_from_slice(&garbage);
        let (out, _) = feed(LIMITS, &input, &sizes);
        // The valid requests are complete before the garbage starts, so they come out intact.
        prop_assert!(out.len() >= expected.len(), "{:?} vs {:?}", out, expected);
        prop_assert_eq!(&out[..expected.len()], &expected[..]);
    }
}

/// Pieces of RESP and inline syntax, so that random streams reach deep parser states
/// (long lengths, skipping, quotes) that uniform random bytes rarely do.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"-".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"'".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"\\x".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\0".to_vec()),
        (0u64..=70).prop_map(|n| n.to_string().into_bytes()),
        any::<i64>().prop_map(|n| n.to_string().into_bytes()),
        (1u64..=8).prop_map(|n| format!("*{n}\r\n").into_bytes()),
        (0u64..=60).prop_map(|n| format!("${n}\r\n").into_bytes()),
        arg_bytes(0..=16),
    ]
}

#[test]
fn deep_nesting_is_a_clean_error_not_a_stack_overflow() {
    let input = b"*1\r\n".repeat(100_000);
    let mut parser = RequestParser::new(RequestLimits::default());
    let mut buf = BytesMut::from(&input[..]);
    assert_eq!(parser.parse(&mut buf), Err(RequestError::ExpectedBulk { got: b'*' }));
    // Same in small pieces, and inside a request being skipped for its length.
    let (out, error) = feed(RequestLimits::default(), &input, &[7]);
    assert_eq!((out, error), (vec![], Some(RequestError::ExpectedBulk { got: b'*' })));
    let input = [&b"*9\r\n"[..], &input].concat();
    let (out, error) = feed(LIMITS, &input, &[5]);
    assert_eq!((out, error), (vec![], Some(RequestError::ExpectedBulk { got: b'*' })));
}

/// A quadratic rescan of 1 MiB is ~5 * 10^11 byte visits (minutes); linear is milliseconds.
/// The bound is loose so a busy machine cannot make it flaky.
const LINEAR_TIME_MAX: Duration = Duration::from_secs(20);

#[test]
fn one_mebibyte_bulk_byte_by_byte_is_linear() {
    let payload_bytes = 1024 * 1024;
    let payload: Vec<u8> = (0..payload_bytes).map(|i| (i % 251) as u8).collect();
    let input = multibulk_bytes(&[b"SET".to_vec(), b"k".to_vec(), payload.clone()]);
    let started = Instant::now();
    let mut parser = RequestParser::new(RequestLimits::default());
    let mut buf = BytesMut::with_capacity(input.len());
    let mut out = Vec::new();
    for &byte in &input {
        buf.extend_from_slice(&[byte]);
        if let Some(parsed) = parser.parse(&mut buf).unwrap() {
            out.push(parsed);
        }
    }
    assert!(started.elapsed() < LINEAR_TIME_MAX, "took {:?}", started.elapsed());
    let expected = Parsed::Command(vec![Bytes::from_static(b"SET"), Bytes::from_static(b"k"), Bytes::from(payload)]);
    assert_eq!(out, vec![expected]);
    assert!(buf.is_empty());
}

#[test]
fn one_mebibyte_inline_line_byte_by_byte_is_linear() {
    let line_bytes = 1024 * 1024;
    let limits = RequestLimits { inline_bytes_max: 2 * line_bytes, ..RequestLimits::default() };
    let mut input = b"ECHO ".to_vec();
    input.resize(line_bytes, b'x');
    input.extend_from_slice(b"\r\n");
    let started = Instant::now();
    let mut parser = RequestParser::new(limits);
    let mut buf = BytesMut::with_capacity(input.len());
    let mut out = Vec::new();
    for &byte in &input {
        buf.extend_from_slice(&[byte]);
        if let Some(parsed) = parser.parse(&mut buf).unwrap() {
            out.push(parsed);
        }
    }
    assert!(started.elapsed() < LINEAR_TIME_MAX, "took {:?}", started.elapsed());
    assert_eq!(out.len(), 1);
    let Parsed::Command(args) = &out[0] else { panic!("{:?}", out[0]) };
    assert_eq!(args.len(), 2);
    assert_eq!(args[1].len(), line_bytes - 5);
}

#[test]
fn many_small_pipelined_requests_in_one_buffer() {
    let one = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nPING\r\n";
    let input = one.repeat(10_000);
    let (out, error) = feed(RequestLimits::default(), &input, &[input.len()]);
    assert_eq!(error, None);
    assert_eq!(out.len(), 20_000);
}
