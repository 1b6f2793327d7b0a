//! The request parser: the bytes a Redis client sends, turned into argument vectors.
//!
//! Redis accepts two request forms, and so does fencelock:
//!
//! - **multibulk**: `*<n>\r\n` followed by `n` bulk strings `$<len>\r\n<bytes>\r\n`. This is
//!   the only array clients send; any other element type inside it (a nested array, a
//!   simple string, an integer) is `Protocol error: expected '$', got 'X'`, as in Redis.
//! - **inline**: a line that does not start with `*`, ended by `\r\n` or a bare `\n`, split
//!   on blanks with Redis's `sdssplitargs` rules (double quotes with `\n \r \t \b \a \\ \"
//!   \xHH` escapes, single quotes with `\'`). `telnet` and `redis-cli` in some modes send
//!   these; health checks send `PING\r\n`.
//!
//! Requests Redis ignores are ignored here too: empty (or all-blank) inline lines, `*0` and
//! any negative count (`*-1` is the null array; Redis skips every count `<= 0`).
//!
//! Why our own parser rather than redis-protocol's decoder: that decoder recurses on nested
//! arrays (a ~40 KB `*1\r\n*1\r\n...` overflows the stack) and rejects inline commands. This
//! one never recurses, because a request is never nested: it is a flat state machine.
//!
//! # Three outcomes
//!
//! - a command: `Ok(Some(Parsed::Command(args)))`, `args` zero-copy slices of the buffer;
//! - a refusal: `Ok(Some(Parsed::Refused(error)))`: the request broke a limit (or, inline,
//!   had unbalanced quotes) and was consumed whole, so the stream is still in step and the
//!   connection answers `-ERR <error>` and reads on (DESIGN rule 7);
//! - a framing error: `Err(error)`: the bytes cannot be a request (bad length syntax, an
//!   element that is not a bulk string, a bulk not followed by CRLF) and there is no way to
//!   find where the next request starts. The connection answers `-ERR <error>` and closes,
//!   as Redis does. The parser stays failed: later calls return the same error.
//!
//! # Bounds
//!
//! Oversized input is never buffered to be refused. A bulk longer than `bulk_bytes_max`, an
//! array longer than `array_len_max`, or an inline line longer than `inline_bytes_max` is
//! detected from its header (or, inline, from the absence of a newline within the limit),
//! and the parser then discards the declared bytes as they arrive, across as many calls as
//! it takes, keeping at most one length line (< 32 bytes) in the buffer. Only when the whole
//! request is gone does it report the refusal, so the reply lines up with the request.
//!
//! A request within the limits is kept in the caller's buffer until complete, so the buffer
//! holds at most one request beyond whatever the caller read ahead: at most
//! `array_len_max * (bulk_bytes_max + 32) + 32` bytes for a multibulk request, and
//! `inline_bytes_max + 2` for an inline one. The parser itself holds one range (16 bytes)
//! per bulk string validated so far, grown as bulks arrive rather than from the declared
//! count, so a bare `*1048576\r\n` costs nothing. A connection that wants a tighter total
//! per request (Redis's `client-query-buffer-limit`) can cap `buf.len()`.
//!
//! # Incremental, linear
//!
//! Any prefix of a valid request gives `Ok(None)`, whatever the split points. Progress is
//! remembered between calls (bytes validated, bulk ranges found, bytes already searched for
//! an inline newline), so a request arriving one byte at a time costs time linear in its
//! length, not quadratic.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

/// The longest `*<count>\r\n` or `$<len>\r\n` line worth waiting for, CRLF included.
///
/// The longest valid one is `$-9223372036854775808\r\n` (23 bytes); a line with no `\r`
/// within 32 bytes cannot become valid, so it is a framing error rather than a reason to
/// keep buffering (Redis waits 64 KiB for the same verdict).
const LENGTH_LINE_BYTES_MAX: usize = 32;

/// The most bulk ranges reserved up front from a multibulk count.
///
/// The count is the client's claim; memory follows the bulks that actually arrive.
const ARG_RANGES_RESERVED_MAX: usize = 64;

/// Per-request size limits. Breaking one gets the request refused, not the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Longest bulk string (one argument of a multibulk request), in bytes.
    /// Default 8 MiB ([`RequestLimits::BULK_BYTES_MAX_DEFAULT`]); Redis's is 512 MiB.
    pub bulk_bytes_max: usize,
    /// Most elements in one multibulk request.
    /// Default 1,048,576 ([`RequestLimits::ARRAY_LEN_MAX_DEFAULT`]).
    pub array_len_max: usize,
    /// Longest inline request line, in bytes, line terminator excluded.
    /// Default 64 KiB ([`RequestLimits::INLINE_BYTES_MAX_DEFAULT`]), Redis's `PROTO_INLINE_MAX_SIZE`.
    pub inline_bytes_max: usize,
}

impl RequestLimits {
    /// Default for [`RequestLimits::bulk_bytes_max`]: 8 MiB, ample for lock names, values
    /// and Lua scripts, small enough that a few clients cannot exhaust memory.
    pub const BULK_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;
    /// Default for [`RequestLimits::array_len_max`]: 1,048,576 elements.
    pub const ARRAY_LEN_MAX_DEFAULT: usize = 1024 * 1024;
    /// Default for [`RequestLimits::inline_bytes_max`]: 64 KiB, as Redis.
    pub const INLINE_BYTES_MAX_DEFAULT: usize = 64 * 1024;
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            bulk_bytes_max: Self::BULK_BYTES_MAX_DEFAULT,
            array_len_max: Self::ARRAY_LEN_MAX_DEFAULT,
            inline_bytes_max: Self::INLINE_BYTES_MAX_DEFAULT,
        }
    }
}

/// One request taken from the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A command and its arguments; never empty. Element 0 is the command name.
    Command(Vec<Bytes>),
    /// A request that was consumed whole but refused (a limit broken, or unbalanced quotes in
    /// an inline line). Answer `-ERR <error>` and go on with the next request.
    Refused(RequestError),
}

/// Why a request was refused or the stream is unreadable.
///
/// The `Display` text is what follows `-ERR ` on the wire. Framing errors keep Redis's
/// words; limit errors name the limit and its value.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Fatal: the count after `*` is not an integer (Redis's `string2ll` rules: optional
    /// `-`, no `+`, no leading zeros, fits in an i64), or its line does not end in CRLF.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// Fatal: the length after `$` is negative, not an integer, or its line does not end in CRLF.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// Fatal: no `\r` within the first 32 bytes of a multibulk count line.
    #[error("Protocol error: too big mbulk count string")]
    MultibulkLengthLineTooLong,
    /// Fatal: no `\r` within the first 32 bytes of a bulk length line.
    #[error("Protocol error: too big bulk count string")]
    BulkLengthLineTooLong,
    /// Fatal: an element of a multibulk request is not a bulk string (a nested array, a
    /// simple string, an integer...). Clients never send those.
    #[error("Protocol error: expected '$', got '{}'", .got.escape_ascii())]
    ExpectedBulk {
        /// The byte found where `$` belonged.
        got: u8,
    },
    /// Fatal: the bytes after a bulk string's declared length are not `\r\n`, so the
    /// declared length is wrong and nothing after it can be trusted.
    #[error("Protocol error: expected CRLF after bulk string")]
    BulkWithoutCrlf,
    /// Refused: an inline line with an unterminated quote, or a closing quote followed by
    /// something other than a blank. (Redis closes the connection here; the line is
    /// complete, so we can answer and stay in step.)
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// Refused: a bulk string longer than [`RequestLimits::bulk_bytes_max`].
    #[error("bulk string of {bulk_bytes} bytes exceeds the bulk-bytes limit ({bulk_bytes_max})")]
    BulkTooLong {
        /// The length the client declared.
        bulk_bytes: u64,
        /// The limit.
        bulk_bytes_max: usize,
    },
    /// Refused: a multibulk request with more elements than [`RequestLimits::array_len_max`].
    #[error("array of {array_len} elements exceeds the array-length limit ({array_len_max})")]
    ArrayTooLong {
        /// The count the client declared.
        array_len: u64,
        /// The limit.
        array_len_max: usize,
    },
    /// Refused: an inline line longer than [`RequestLimits::inline_bytes_max`].
    #[error("inline request of {inline_bytes} bytes exceeds the inline-bytes limit ({inline_bytes_max})")]
    InlineTooLong {
        /// The line's length, terminator excluded.
        inline_bytes: u64,
        /// The limit.
        inline_bytes_max: usize,
    },
}

/// An incremental, bounded, non-recursive parser of Redis requests. One per connection.
///
/// The connection reads into a `BytesMut` and calls [`RequestParser::parse`] until it
/// returns `Ok(None)`; between calls it may only append to the buffer.
#[derive(Debug)]
pub struct RequestParser {
    limits: RequestLimits,
    state: State,
}

/// Where the parser is within the stream.
#[derive(Debug)]
enum State {
    /// At a request boundary: the buffer's first byte picks multibulk (`*`) or inline.
    Start,
    /// An inline request whose newline has not arrived yet.
    Inline {
        /// Bytes at the front of the buffer already known to hold no `\n`.
        scanned_bytes: usize,
    },
    /// A multibulk request within the limits, validated in place in the buffer.
    Multibulk(Multibulk),
    /// Discarding the rest of a refused multibulk request.
    SkipMultibulk {
        /// What to answer once the request is gone.
        refusal: RequestError,
        /// Elements still to skip after the current phase.
        elements_remaining: u64,
        /// Progress through the current element.
        phase: SkipPhase,
    },
    /// Discarding the rest of an inline line longer than the limit.
    SkipInline {
        /// Bytes of the line discarded so far.
        skipped_bytes: u64,
        /// Whether the last discarded byte was `\r` (it belongs to the terminator if `\n` follows).
        skipped_cr_last: bool,
    },
    /// A framing error was returned; the stream is unusable.
    Failed(RequestError),
}

/// A multibulk request being validated. Nothing is consumed from the buffer until the whole
/// request has arrived; this remembers how far validation got so no byte is examined twice.
#[derive(Debug)]
struct Multibulk {
    /// Elements the header declared, at least 1 and at most `array_len_max`.
    elements_total: usize,
    /// Bytes at the front of the buffer that belong to this request and are validated.
    validated_bytes: usize,
    /// Buffer ranges of the bulk strings validated so far.
    arg_ranges: Vec<Range<usize>>,
    /// The length of the bulk whose header is validated but whose payload is incomplete.
    bulk_pending_bytes: Option<usize>,
}

/// Progress through one element of a refused multibulk request.
#[derive(Debug, Clone, Copy)]
enum SkipPhase {
    /// Waiting for the next element's `$<len>\r\n` (or done, if no elements remain).
    Header,
    /// Discarding a payload.
    Payload {
        /// Payload bytes still to discard.
        remaining_bytes: u64,
    },
    /// Checking the CRLF after a discarded payload.
    Crlf,
}

/// Which length line is being read; the two differ only in their error texts.
#[derive(Debug, Clone, Copy)]
enum LengthLine {
    Multibulk,
    Bulk,
}

impl LengthLine {
    fn invalid(self) -> RequestError {
        match self {
            LengthLine::Multibulk => RequestError::InvalidMultibulkLength,
            LengthLine::Bulk => RequestError::InvalidBulkLength,
        }
    }

    fn too_long(self) -> RequestError {
        match self {
            LengthLine::Multibulk => RequestError::MultibulkLengthLineTooLong,
            LengthLine::Bulk => RequestError::BulkLengthLineTooLong,
        }
    }
}

impl RequestParser {
    /// A parser at the start of a stream.
    pub fn new(limits: RequestLimits) -> Self {
        RequestParser { limits, state: State::Start }
    }

    /// The limits this parser enforces.
    pub fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    /// Takes one complete request from the front of `buf`.
    ///
    /// - `Ok(None)`: more bytes are needed. Bytes of a request within the limits stay in
    ///   `buf`; bytes of a refused request and skipped empty requests may have been removed.
    /// - `Ok(Some(Parsed::Command(args)))`: `args.len() >= 1`; the request's bytes are
    ///   removed from `buf` and the arguments share its memory where they can.
    /// - `Ok(Some(Parsed::Refused(error)))`: a request broke a limit and has been removed
    ///   whole; answer the error and carry on.
    /// - `Err(error)`: a framing error; answer it and close. Every later call returns it again.
    ///
    /// Between calls the caller may append to `buf` but must not remove from it.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Parsed>, RequestError> {
        let result = self.step(buf);
        if let Err(error) = &result {
            self.state = State::Failed(error.clone());
        }
        result
    }

    /// `parse` without the failure latch. Loops so that skipped requests (empty lines,
    /// `*0`) and state changes never cost the caller a round trip; every pass either
    /// returns, consumes bytes, or moves to a state that will.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Parsed>, RequestError> {
        let limits = self.limits;
        loop {
            match &mut self.state {
                State::Failed(error) => return Err(error.clone()),

                State::Start => {
                    let Some(&first) = buf.first() else { return Ok(None) };
                    if first != b'*' {
                        self.state = State::Inline { scanned_bytes: 0 };
                        continue;
                    }
                    let Some((count, line_bytes)) = length_line(buf, LengthLine::Multibulk)? else {
                        return Ok(None);
                    };
                    // Redis skips every count <= 0 without a reply: `*0` and the null `*-1`.
                    let Ok(count @ 1..) = u64::try_from(count) else {
                        buf.advance(line_bytes);
                        continue;
                    };
                    if count > limits.array_len_max as u64 {
                        buf.advance(line_bytes);
                        self.state = State::SkipMultibulk {
                            refusal: RequestError::ArrayTooLong {
                                array_len: count,
                                array_len_max: limits.array_len_max,
                            },
                            elements_remaining: count,
                            phase: SkipPhase::Header,
                        };
                        continue;
                    }
                    // Fits: count <= array_len_max, a usize.
                    let elements_total = count as usize;
                    self.state = State::Multibulk(Multibulk {
                        elements_total,
                        validated_bytes: line_bytes,
                        arg_ranges: Vec::with_capacity(elements_total.min(ARG_RANGES_RESERVED_MAX)),
                        bulk_pending_bytes: None,
                    });
                }

                State::Inline { scanned_bytes } => {
                    // A line within the limit has its '\n' at index <= inline_bytes_max + 1
                    // (after a '\r'), so nothing beyond that window is worth searching.
                    let window_bytes = limits.inline_bytes_max.saturating_add(2);
                    let searchable_bytes = buf.len().min(window_bytes);
                    let from = (*scanned_bytes).min(searchable_bytes);
                    let Some(offset) = buf[from..searchable_bytes].iter().position(|&b| b == b'\n') else {
                        if buf.len() < window_bytes {
                            *scanned_bytes = searchable_bytes;
                            return Ok(None);
                        }
                        // No newline within the window: the line is too long whatever
                        // follows. Drop the window (not the whole buffer: the line may end
                        // just past it, and the next request start after).
                        let skipped_cr_last = buf[window_bytes - 1] == b'\r';
                        buf.advance(window_bytes);
                        self.state = State::SkipInline { skipped_bytes: window_bytes as u64, skipped_cr_last };
                        continue;
                    };
                    let newline_at = from + offset;
                    let line_bytes =
                        if newline_at > 0 && buf[newline_at - 1] == b'\r' { newline_at - 1 } else { newline_at };
                    self.state = State::Start;
                    if line_bytes > limits.inline_bytes_max {
                        buf.advance(newline_at + 1);
                        return Ok(Some(Parsed::Refused(RequestError::InlineTooLong {
                            inline_bytes: line_bytes as u64,
                            inline_bytes_max: limits.inline_bytes_max,
                        })));
                    }
                    let line = take_own(buf, newline_at + 1).slice(..line_bytes);
                    match split_inline(&line) {
                        // Blank line: Redis ignores it, and so do we.
                        Ok(args) if args.is_empty() => continue,
                        Ok(args) => return Ok(Some(Parsed::Command(args))),
                        Err(error) => return Ok(Some(Parsed::Refused(error))),
                    }
                }

                State::Multibulk(request) => {
                    if request.arg_ranges.len() == request.elements_total {
                        // Complete: the last bulk was validated in this same call, so
                        // `validated_bytes <= buf.len()`.
                        let bytes = take_own(buf, request.validated_bytes);
                        let args = request.arg_ranges.iter().map(|range| bytes.slice(range.clone())).collect();
                        self.state = State::Start;
                        return Ok(Some(Parsed::Command(args)));
                    }
                    match request.bulk_pending_bytes {
                        Some(bulk_bytes) => {
                            let payload_start = request.validated_bytes;
                            let payload_end = payload_start.saturating_add(bulk_bytes);
                            let Some(terminator) = buf.get(payload_end..payload_end.saturating_add(2)) else {
                                // O(1) per call however the payload trickles in.
                                return Ok(None);
                            };
                            if terminator != b"\r\n" {
                                return Err(RequestError::BulkWithoutCrlf);
                            }
                            request.arg_ranges.push(payload_start..payload_end);
                            request.validated_bytes = payload_end + 2;
                            request.bulk_pending_bytes = None;
                        }
                        None => {
                            let header = buf.get(request.validated_bytes..).unwrap_or_default();
                            let Some((bulk_bytes, line_bytes)) = bulk_header(header)? else { return Ok(None) };
                            if bulk_bytes > limits.bulk_bytes_max as u64 {
                                // Refuse the whole request: drop what was validated and this
                                // header, then skip the payload and the elements after it.
                                let elements_remaining = (request.elements_total - request.arg_ranges.len() - 1) as u64;
                                buf.advance(request.validated_bytes + line_bytes);
                                self.state = State::SkipMultibulk {
                                    refusal: RequestError::BulkTooLong {
                                        bulk_bytes,
                                        bulk_bytes_max: limits.bulk_bytes_max,
                                    },
                                    elements_remaining,
                                    phase: SkipPhase::Payload { remaining_bytes: bulk_bytes },
                                };
                                continue;
                            }
                            request.validated_bytes += line_bytes;
                            // Fits: bulk_bytes <= bulk_bytes_max, a usize.
                            request.bulk_pending_bytes = Some(bulk_bytes as usize);
                        }
                    }
                }

                State::SkipMultibulk { refusal, elements_remaining, phase } => match phase {
                    SkipPhase::Header => {
                        if *elements_remaining == 0 {
                            let refusal = refusal.clone();
                            self.state = State::Start;
                            return Ok(Some(Parsed::Refused(refusal)));
                        }
                        // Skipped elements are still checked: a framing error here means
                        // the stream is lost, refusal or not.
                        let Some((bulk_bytes, line_bytes)) = bulk_header(buf)? else { return Ok(None) };
                        buf.advance(line_bytes);
                        *elements_remaining -= 1;
                        *phase = SkipPhase::Payload { remaining_bytes: bulk_bytes };
                    }
                    SkipPhase::Payload { remaining_bytes } => {
                        // Less than `remaining_bytes` (a u64) whenever it is cast down.
                        let discard_bytes = (*remaining_bytes).min(buf.len() as u64) as usize;
                        buf.advance(discard_bytes);
                        *remaining_bytes -= discard_bytes as u64;
                        if *remaining_bytes > 0 {
                            return Ok(None);
                        }
                        *phase = SkipPhase::Crlf;
                    }
                    SkipPhase::Crlf => {
                        let Some(terminator) = buf.get(..2) else { return Ok(None) };
                        if terminator != b"\r\n" {
                            return Err(RequestError::BulkWithoutCrlf);
                        }
                        buf.advance(2);
                        *phase = SkipPhase::Header;
                    }
                },

                State::SkipInline { skipped_bytes, skipped_cr_last } => {
                    let Some(newline_at) = buf.iter().position(|&b| b == b'\n') else {
                        if let Some(&last) = buf.last() {
                            *skipped_cr_last = last == b'\r';
                        }
                        *skipped_bytes += buf.len() as u64;
                        buf.clear();
                        return Ok(None);
                    };
                    let cr_before_newline =
                        if newline_at > 0 { buf[newline_at - 1] == b'\r' } else { *skipped_cr_last };
                    let inline_bytes = *skipped_bytes + newline_at as u64 - u64::from(cr_before_newline);
                    buf.advance(newline_at + 1);
                    self.state = State::Start;
                    return Ok(Some(Parsed::Refused(RequestError::InlineTooLong {
                        inline_bytes,
                        inline_bytes_max: limits.inline_bytes_max,
                    })));
                }
            }
        }
    }
}

/// Reads a `$<len>\r\n` line at the front of `bytes`: the length and the line's size.
fn bulk_header(bytes: &[u8]) -> Result<Option<(u64, usize)>, RequestError> {
    let Some(&first) = bytes.first() else { return Ok(None) };
    if first != b'$' {
        // Known from one byte: no need to wait for the line (Redis does, to the same end).
        return Err(RequestError::ExpectedBulk { got: first });
    }
    let Some((bulk_bytes, line_bytes)) = length_line(bytes, LengthLine::Bulk)? else { return Ok(None) };
    // A negative length (`$-1`, the null bulk) is not a request argument.
    let bulk_bytes = u64::try_from(bulk_bytes).map_err(|_| RequestError::InvalidBulkLength)?;
    Ok(Some((bulk_bytes, line_bytes)))
}

/// Reads a `*<n>\r\n` or `$<n>\r\n` line at the front of `bytes` (the caller checked the
/// first byte): the number and the line's size, CRLF included. `Ok(None)` if incomplete.
fn length_line(bytes: &[u8], kind: LengthLine) -> Result<Option<(i64, usize)>, RequestError> {
    let window = &bytes[..bytes.len().min(LENGTH_LINE_BYTES_MAX)];
    let Some(cr_at) = window.iter().position(|&b| b == b'\r') else {
        return if bytes.len() >= LENGTH_LINE_BYTES_MAX { Err(kind.too_long()) } else { Ok(None) };
    };
    let Some(&after_cr) = bytes.get(cr_at + 1) else { return Ok(None) };
    if after_cr != b'\n' {
        return Err(kind.invalid());
    }
    let digits = bytes.get(1..cr_at).unwrap_or_default();
    let value = parse_i64(digits).ok_or(kind.invalid())?;
    Ok(Some((value, cr_at + 2)))
}

/// Parses an integer as Redis's `string2ll` does: an optional `-`, then `0` alone or digits
/// without a leading zero, within i64. No `+`, no blanks, no `-0`.
fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    match digits {
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    // Accumulating toward the sign keeps i64::MIN representable.
    let mut value: i64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(byte - b'0');
        value = value.checked_mul(10)?;
        value = if negative { value.checked_sub(digit)? } else { value.checked_add(digit)? };
    }
    Some(value)
}

/// `isspace` in the C locale: what `sdssplitargs` skips between arguments.
fn is_blank(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// One inline argument being built: a slice of the line while its bytes are contiguous and
/// unescaped (the common case, zero-copy), owned once a quote or an escape breaks that.
enum Token {
    Slice(Range<usize>),
    Owned(Vec<u8>),
}

impl Token {
    /// Appends the line's byte at `at`.
    fn push_at(&mut self, line: &[u8], at: usize) {
        match self {
            Token::Slice(range) if range.start == range.end => *range = at..at + 1,
            Token::Slice(range) if range.end == at => range.end += 1,
            Token::Slice(_) => self.push_byte(line, line[at]),
            Token::Owned(owned) => owned.push(line[at]),
        }
    }

    /// Appends a byte that is not a copy of the line's next one (an escape, or after a gap).
    fn push_byte(&mut self, line: &[u8], byte: u8) {
        if let Token::Slice(range) = self {
            *self = Token::Owned(line[range.clone()].to_vec());
        }
        if let Token::Owned(owned) = self {
            owned.push(byte);
        }
    }

    fn into_bytes(self, line: &Bytes) -> Bytes {
        match self {
            Token::Slice(range) => line.slice(range),
            Token::Owned(owned) => Bytes::from(owned),
        }
    }
}

/// Takes the first `len` bytes of `buf` as one request's own bytes, copied into an
/// allocation of their own size. Its arguments (lock names, tokens, values) live on
/// in log entries and in the tables, and a slice of the shared read buffer would keep
/// the whole buffer alive for each of them: 2.7 KB of RSS per log entry for small
/// requests (measured), and after one huge request, whose allocation the buffer keeps,
/// a 65 KiB value could pin tens of MiB (a review found that sharing "large" requests
/// could be steered into that by padding). Copying a 1 MiB value costs tens of µs.
fn take_own(buf: &mut BytesMut, len: usize) -> Bytes {
    let own = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    own
}

/// Splits an inline line (terminator removed) into arguments with the rules of Redis's
/// `sdssplitargs`. A blank line gives no arguments.
fn split_inline(line: &Bytes) -> Result<Vec<Bytes>, RequestError> {
    // sdssplitargs walks a C string: a NUL ends the line.
    let line_bytes = line.iter().position(|&b| b == 0).unwrap_or(line.len());
    let text = &line[..line_bytes];
    let closing_quote_ok = |at: usize| text.get(at + 1).is_none_or(|&next| is_blank(next));
    let mut args = Vec::new();
    let mut at = 0;
    loop {
        while at < text.len() && is_blank(text[at]) {
            at += 1;
        }
        if at == text.len() {
            return Ok(args);
        }
        let mut token = Token::Slice(at..at);
        let mut quote: Option<u8> = None;
        // Every pass moves `at` forward by at least one byte or ends the token.
        loop {
            let byte = text.get(at).copied();
            match (quote, byte) {
                (Some(_), None) => return Err(RequestError::UnbalancedQuotes),
                (Some(b'"'), Some(b'\\')) => {
                    let hex = |offset: usize| text.get(at + offset).and_then(|&b| (b as char).to_digit(16));
                    if let (Some(b'x'), Some(high), Some(low)) = (text.get(at + 1), hex(2), hex(3)) {
                        token.push_byte(text, (high * 16 + low) as u8);
                        at += 4;
                    } else if let Some(&escaped) = text.get(at + 1) {
                        let byte = match escaped {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        };
                        token.push_byte(text, byte);
                        at += 2;
                    } else {
                        // A trailing backslash is literal; the missing quote is caught next pass.
                        token.push_at(text, at);
                        at += 1;
                    }
                }
                (Some(b'\''), Some(b'\\')) if text.get(at + 1) == Some(&b'\'') => {
                    token.push_byte(text, b'\'');
                    at += 2;
                }
                (Some(open), Some(close)) if open == close => {
                    if !closing_quote_ok(at) {
                        return Err(RequestError::UnbalancedQuotes);
                    }
                    at += 1;
                    break;
                }
                (Some(_), Some(_)) => {
                    token.push_at(text, at);
                    at += 1;
                }
                (None, None | Some(b' ' | b'\n' | b'\r' | b'\t')) => break,
                (None, Some(open @ (b'"' | b'\''))) => {
                    quote = Some(open);
                    at += 1;
                }
                (None, Some(_)) => {
                    token.push_at(text, at);
                    at += 1;
                }
            }
        }
        args.push(token.into_bytes(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits_small() -> RequestLimits {
        RequestLimits { bulk_bytes_max: 16, array_len_max: 4, inline_bytes_max: 32 }
    }

    /// Parses everything in `input` in one buffer, collecting outcomes until `Ok(None)`.
    fn parse_all(limits: RequestLimits, input: &[u8]) -> (Vec<Parsed>, Result<(), RequestError>, BytesMut) {
        let mut parser = RequestParser::new(limits);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(parsed)) => out.push(parsed),
                Ok(None) => return (out, Ok(()), buf),
                Err(error) => return (out, Err(error), buf),
            }
        }
    }

    fn cmd(args: &[&[u8]]) -> Parsed {
        Parsed::Command(args.iter().map(|a| Bytes::copy_from_slice(a)).collect())
    }

    fn commands(limits: RequestLimits, input: &[u8]) -> Vec<Parsed> {
        let (out, result, rest) = parse_all(limits, input);
        assert_eq!(result, Ok(()), "input {:?}", input.escape_ascii().to_string());
        assert!(rest.is_empty(), "left over: {:?}", rest);
        out
    }

    fn fatal(input: &[u8]) -> RequestError {
        let (out, result, _) = parse_all(RequestLimits::default(), input);
        assert!(out.is_empty(), "{out:?}");
        result.expect_err("expected a framing error")
    }

    #[test]
    fn multibulk_simple() {
        let out = commands(RequestLimits::default(), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n");
        assert_eq!(out, vec![cmd(&[b"SET", b"k", b"value"])]);
        let out = commands(RequestLimits::default(), b"*1\r\n$0\r\n\r\n");
        assert_eq!(out, vec![cmd(&[b""])]);
    }

    #[test]
    fn inline_simple() {
        let out = commands(RequestLimits::default(), b"PING\r\nSET k v\n  GET\tk  \r\n");
        assert_eq!(out, vec![cmd(&[b"PING"]), cmd(&[b"SET", b"k", b"v"]), cmd(&[b"GET", b"k"])]);
    }

    #[test]
    fn pipelining_three_requests_in_one_buffer() {
        let input = b"*1\r\n$4\r\nPING\r\nECHO hi\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        let out = commands(RequestLimits::default(), input);
        assert_eq!(out, vec![cmd(&[b"PING"]), cmd(&[b"ECHO", b"hi"]), cmd(&[b"GET", b"key"])]);
    }

    #[test]
    fn multibulk_is_binary_safe() {
        let out = commands(RequestLimits::default(), b"*2\r\n$3\r\nSET\r\n$6\r\na\r\n\0*$\r\n");
        assert_eq!(out, vec![cmd(&[b"SET", b"a\r\n\0*$"])]);
    }

    #[test]
    fn every_request_owns_its_bytes() {
        let mut parser = RequestParser::new(RequestLimits::default());
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nSET abc \"q\"\r\n"[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let Some(Parsed::Command(args)) = parser.parse(&mut buf).unwrap() else { panic!() };
        // Copied out (a lock name kept in the table must not pin the read buffer), and
        // the arguments of one request share that one copy.
        assert!(!range.contains(&(args[0].as_ptr() as usize)));
        assert_eq!(args[1].as_ptr() as usize, args[0].as_ptr() as usize + 9);
        let Some(Parsed::Command(args)) = parser.parse(&mut buf).unwrap() else { panic!() };
        assert_eq!(args, vec![&b"SET"[..], b"abc", b"q"]);
        assert!(!range.contains(&(args[1].as_ptr() as usize)));

        // A large request is copied too: shared, it would pin its buffer's allocation
        // (larger still when left from an earlier, huger request).
        let value = vec![b'v'; 256 * 1024];
        let mut roomy = BytesMut::with_capacity(8 * 1024 * 1024);
        roomy.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", value.len()).as_bytes());
        roomy.extend_from_slice(&value);
        roomy.extend_from_slice(b"\r\n");
        let range = roomy.as_ptr() as usize..roomy.as_ptr() as usize + roomy.capacity();
        let Some(Parsed::Command(args)) = parser.parse(&mut roomy).unwrap() else { panic!() };
        assert_eq!(args[2].len(), value.len());
        assert!(!range.contains(&(args[0].as_ptr() as usize)), "copied out of the 8 MiB buffer");
    }

    #[test]
    fn inline_quotes_and_escapes() {
        let input = br#"SET "a b" 'c\'d' "\x41\x7a\n\r\t\b\a\\\"\q" '\n' x"y z" "" '' "\x4" "\xzz""#;
        let out = commands(RequestLimits::default(), &[&input[..], b"\r\n"].concat());
        assert_eq!(
            out,
            vec![cmd(&[b"SET", b"a b", b"c'd", b"Az\n\r\t\x08\x07\\\"q", b"\\n", b"xy z", b"", b"", b"x4", b"xzz"])]
        );
    }

    #[test]
    fn inline_nul_ends_the_line_as_in_redis() {
        let out = commands(RequestLimits::default(), b"SET k v\0ignored \"\r\nPING\r\n");
        assert_eq!(out, vec![cmd(&[b"SET", b"k", b"v"]), cmd(&[b"PING"])]);
    }

    #[test]
    fn inline_vertical_tab_is_blank_between_args_only() {
        // sdssplitargs skips any isspace() between tokens but ends a token only at
        // space, tab, CR, LF.
        let out = commands(RequestLimits::default(), b"\x0bA\x0bB C\r\n");
        assert_eq!(out, vec![cmd(&[b"A\x0bB", b"C"])]);
    }

    #[test]
    fn unbalanced_quotes_are_refused_and_the_stream_goes_on() {
        for line in [&b"SET \"abc"[..], b"SET 'abc", b"SET \"a\"b", b"SET 'a'b", b"SET \"abc\\\"", b"\"\\"] {
            let input = [line, b"\r\nPING\r\n"].concat();
            let out = commands(RequestLimits::default(), &input);
            assert_eq!(out, vec![Parsed::Refused(RequestError::UnbalancedQuotes), cmd(&[b"PING"])], "{line:?}");
        }
    }

    #[test]
    fn empty_lines_are_skipped() {
        let out = commands(RequestLimits::default(), b"\r\n\n   \r\n\t\n\r\r\nPING\r\n\r\n");
        assert_eq!(out, vec![cmd(&[b"PING"])]);
    }

    #[test]
    fn empty_and_null_arrays_are_skipped() {
        let out = commands(RequestLimits::default(), b"*0\r\n*-1\r\n*-7\r\n*1\r\n$4\r\nPING\r\n*0\r\n");
        assert_eq!(out, vec![cmd(&[b"PING"])]);
    }

    #[test]
    fn oversized_bulk_is_refused_then_the_next_request_parses() {
        let input = b"*3\r\n$3\r\nSET\r\n$17\r\nAAAAAAAAAAAAAAAAA\r\n$1\r\nv\r\n*1\r\n$4\r\nPING\r\n";
        let refused = Parsed::Refused(RequestError::BulkTooLong { bulk_bytes: 17, bulk_bytes_max: 16 });
        assert_eq!(commands(limits_small(), input), vec![refused.clone(), cmd(&[b"PING"])]);
        // Later elements are skipped even if they too are oversized; the first one is reported.
        let input = b"*2\r\n$17\r\nAAAAAAAAAAAAAAAAA\r\n$20\r\nBBBBBBBBBBBBBBBBBBBB\r\nPING\r\n";
        assert_eq!(commands(limits_small(), input), vec![refused, cmd(&[b"PING"])]);
        // Last element oversized.
        let input = b"*1\r\n$17\r\nAAAAAAAAAAAAAAAAA\r\nPING\r\n";
        assert_eq!(commands(limits_small(), input)[1], cmd(&[b"PING"]));
    }

    #[test]
    fn oversized_bulk_is_not_buffered() {
        let limits = RequestLimits { bulk_bytes_max: 1024, ..RequestLimits::default() };
        let mut parser = RequestParser::new(limits);
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$1000000\r\n"[..]);
        assert_eq!(parser.parse(&mut buf), Ok(None));
        assert!(buf.is_empty());
        let chunk = [b'x'; 4096];
        let mut sent_bytes = 0;
        while sent_bytes < 1_000_000 {
            let n = chunk.len().min(1_000_000 - sent_bytes);
            buf.extend_from_slice(&chunk[..n]);
            sent_bytes += n;
            assert_eq!(parser.parse(&mut buf), Ok(None));
            assert!(buf.is_empty());
        }
        buf.extend_from_slice(b"\r\nPING\r\n");
        let refused = Parsed::Refused(RequestError::BulkTooLong { bulk_bytes: 1_000_000, bulk_bytes_max: 1024 });
        assert_eq!(parser.parse(&mut buf), Ok(Some(refused)));
        assert_eq!(parser.parse(&mut buf), Ok(Some(cmd(&[b"PING"]))));
        assert_eq!(parser.parse(&mut buf), Ok(None));
    }

    #[test]
    fn oversized_array_is_refused_then_the_next_request_parses() {
        let input =
            [&b"*5\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n"[..], b"$40\r\n", &[b'z'; 40], b"\r\nECHO x\r\n"];
        let input = &input.concat();
        let refused = Parsed::Refused(RequestError::ArrayTooLong { array_len: 5, array_len_max: 4 });
        assert_eq!(commands(limits_small(), input), vec![refused, cmd(&[b"ECHO", b"x"])]);
    }

    #[test]
    fn oversized_array_is_skipped_element_by_element() {
        let mut parser = RequestParser::new(limits_small());
        let mut buf = BytesMut::from(&b"*1000\r\n"[..]);
        assert_eq!(parser.parse(&mut buf), Ok(None));
        for _ in 0..999 {
            buf.extend_from_slice(b"$3\r\nabc\r\n");
            assert_eq!(parser.parse(&mut buf), Ok(None));
            assert!(buf.is_empty());
        }
        // The refusal comes as soon as the last element is gone, not with the next request.
        buf.extend_from_slice(b"$3\r\nabc\r\n");
        let refused = RequestError::ArrayTooLong { array_len: 1000, array_len_max: 4 };
        assert_eq!(parser.parse(&mut buf), Ok(Some(Parsed::Refused(refused))));
        buf.extend_from_slice(b"PING\r\n");
        assert_eq!(parser.parse(&mut buf), Ok(Some(cmd(&[b"PING"]))));
    }

    #[test]
    fn oversized_inline_is_refused_then_the_next_request_parses() {
        let long = [b'a'; 33];
        // Newline within the buffer.
        for terminator in [&b"\r\n"[..], b"\n"] {
            let input = [&long[..], terminator, b"PING\r\n"].concat();
            let refused = Parsed::Refused(RequestError::InlineTooLong { inline_bytes: 33, inline_bytes_max: 32 });
            assert_eq!(commands(limits_small(), &input), vec![refused, cmd(&[b"PING"])]);
        }
        // Exactly at the limit is fine, with either terminator.
        let out = commands(limits_small(), &[&long[..32], b"\r\n", &long[..32], b"\n"].concat());
        assert_eq!(out.len(), 2);
        // Newline far away, arriving in pieces: the buffer never holds more than the window.
        let mut parser = RequestParser::new(limits_small());
        let mut buf = BytesMut::new();
        for _ in 0..100 {
            buf.extend_from_slice(b"abcdefghij");
            assert_eq!(parser.parse(&mut buf), Ok(None));
            assert!(buf.len() <= 34);
        }
        buf.extend_from_slice(b"\r");
        assert_eq!(parser.parse(&mut buf), Ok(None));
        buf.extend_from_slice(b"\nPING\r\n");
        let refused = RequestError::InlineTooLong { inline_bytes: 1000, inline_bytes_max: 32 };
        assert_eq!(parser.parse(&mut buf), Ok(Some(Parsed::Refused(refused))));
        assert_eq!(parser.parse(&mut buf), Ok(Some(cmd(&[b"PING"]))));
    }

    #[test]
    fn invalid_multibulk_lengths_are_fatal() {
        for input in [
            &b"*abc\r\n"[..],
            b"*+3\r\n",
            b"*03\r\n",
            b"*-0\r\n",
            b"*\r\n",
            b"*-\r\n",
            b"* 3\r\n",
            b"*3 \r\n",
            b"*3\rX",
            b"*9223372036854775808\r\n",
            b"*-9223372036854775809\r\n",
        ] {
            assert_eq!(fatal(input), RequestError::InvalidMultibulkLength, "{:?}", input.escape_ascii().to_string());
        }
        assert_eq!(fatal(b"*33333333333333333333333333333333"), RequestError::MultibulkLengthLineTooLong);
    }

    #[test]
    fn invalid_bulk_lengths_are_fatal() {
        for header in
            [&b"$-1\r\n"[..], b"$-5\r\n", b"$+3\r\n", b"$x\r\n", b"$03\r\n", b"$3\n\r\n", b"$9223372036854775808\r\n"]
        {
            let input = [&b"*1\r\n"[..], header].concat();
            assert_eq!(fatal(&input), RequestError::InvalidBulkLength, "{:?}", input.escape_ascii().to_string());
        }
        assert_eq!(fatal(b"*1\r\n$3333333333333333333333333333333"), RequestError::BulkLengthLineTooLong);
        // A huge but well-formed length is a limit matter, not a framing one.
        let (out, result, _) = parse_all(limits_small(), b"*1\r\n$9223372036854775807\r\n");
        assert_eq!((out, result), (vec![], Ok(())));
    }

    #[test]
    fn non_bulk_elements_are_fatal() {
        assert_eq!(fatal(b"*1\r\n:1\r\n"), RequestError::ExpectedBulk { got: b':' });
        assert_eq!(fatal(b"*1\r\n+OK\r\n"), RequestError::ExpectedBulk { got: b'+' });
        assert_eq!(fatal(b"*2\r\n$1\r\na\r\n*1\r\n$1\r\nb\r\n"), RequestError::ExpectedBulk { got: b'*' });
        // The same check applies to elements being skipped.
        let (_, result, _) = parse_all(limits_small(), b"*9\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(result, Err(RequestError::ExpectedBulk { got: b':' }));
        assert_eq!(
            RequestError::ExpectedBulk { got: b'\r' }.to_string(),
            "Protocol error: expected '$', got '\\r'",
            "no raw CR or LF may reach the wire"
        );
    }

    #[test]
    fn bulk_without_crlf_is_fatal() {
        assert_eq!(fatal(b"*1\r\n$3\r\nabcd\r\n"), RequestError::BulkWithoutCrlf);
        assert_eq!(fatal(b"*1\r\n$3\r\nabc\n\r"), RequestError::BulkWithoutCrlf);
        // Also while skipping a refused request.
        let (_, result, _) = parse_all(limits_small(), b"*1\r\n$17\r\nAAAAAAAAAAAAAAAAAXX");
        assert_eq!(result, Err(RequestError::BulkWithoutCrlf));
    }

    #[test]
    fn framing_errors_stick() {
        let mut parser = RequestParser::new(RequestLimits::default());
        let mut buf = BytesMut::from(&b"*x\r\n"[..]);
        assert_eq!(parser.parse(&mut buf), Err(RequestError::InvalidMultibulkLength));
        buf.clear();
        buf.extend_from_slice(b"PING\r\n");
        assert_eq!(parser.parse(&mut buf), Err(RequestError::InvalidMultibulkLength));
    }

    #[test]
    fn every_prefix_is_incomplete_and_every_split_parses() {
        let input: &[u8] = b"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\nSET \"x y\" 'z'\r\nPING\n";
        let expected = vec![cmd(&[b"ECHO", b"a\r\nb"]), cmd(&[b"SET", b"x y", b"z"]), cmd(&[b"PING"])];
        for split in 0..=input.len() {
            let mut parser = RequestParser::new(RequestLimits::default());
            let mut buf = BytesMut::from(&input[..split]);
            let mut out = Vec::new();
            while let Some(parsed) = parser.parse(&mut buf).unwrap() {
                out.push(parsed);
            }
            buf.extend_from_slice(&input[split..]);
            while let Some(parsed) = parser.parse(&mut buf).unwrap() {
                out.push(parsed);
            }
            assert_eq!(out, expected, "split at {split}");
        }
    }

    #[test]
    fn display_texts_name_the_limit() {
        let error = RequestError::BulkTooLong { bulk_bytes: 9_000_000, bulk_bytes_max: 8_388_608 };
        assert_eq!(error.to_string(), "bulk string of 9000000 bytes exceeds the bulk-bytes limit (8388608)");
        let error = RequestError::ArrayTooLong { array_len: 2_000_000, array_len_max: 1_048_576 };
        assert_eq!(error.to_string(), "array of 2000000 elements exceeds the array-length limit (1048576)");
        let error = RequestError::InlineTooLong { inline_bytes: 70_000, inline_bytes_max: 65_536 };
        assert_eq!(error.to_string(), "inline request of 70000 bytes exceeds the inline-bytes limit (65536)");
        assert_eq!(RequestError::InvalidBulkLength.to_string(), "Protocol error: invalid bulk length");
        assert_eq!(RequestError::ExpectedBulk { got: b':' }.to_string(), "Protocol error: expected '$', got ':'");
    }

    #[test]
    fn parse_i64_follows_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [&b""[..], b"-", b"-0", b"00", b"01", b"+1", b"1a", b" 1", b"9223372036854775808"] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }
}
