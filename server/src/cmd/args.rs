//! A cursor over a request's arguments that produces Redis's exact error texts.

use bytes::Bytes;

use crate::resp::Wire;

/// Why a request was refused before reaching the state machine. `Display` is the
/// text after the `-`, prefix included, worded as Redis words it where Redis has the
/// same error (clients match on some of these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    /// Wrong number of arguments.
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(String),
    /// Unparseable option.
    #[error("ERR syntax error")]
    Syntax,
    /// An integer argument that is not one.
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// Anything else, with its full text.
    #[error("{0}")]
    Other(String),
}

impl CmdError {
    /// Redis's unknown-command error, which clients use to detect features.
    pub fn unknown(args: &[Bytes]) -> CmdError {
        let name = String::from_utf8_lossy(&args[0]);
        let mut text = format!("ERR unknown command '{}', with args beginning with: ", truncate(&name, 128));
        for arg in &args[1..] {
            if text.len() >= 512 {
                break;
            }
            text.push_str(&format!("'{}' ", truncate(&String::from_utf8_lossy(arg), 128)));
        }
        CmdError::Other(text)
    }

    /// As a reply.
    pub fn to_wire(&self) -> Wire {
        Wire::Error(self.to_string())
    }
}

/// Longest glob pattern (KEYS, SCAN MATCH, PSUBSCRIBE) and channel name (SUBSCRIBE):
/// the longest key or channel there can be. A glob costs up to its length times the
/// text's to match, and PSUBSCRIBE patterns are matched against every PUBLISH while
/// it applies, so an 8 MiB pattern would stall a node for seconds per message.
pub const PATTERN_BYTES_MAX: usize = 4 * 1024;

/// Refuses a pattern or channel name over `PATTERN_BYTES_MAX`.
pub fn check_pattern(pattern: &[u8]) -> Result<(), CmdError> {
    if pattern.len() > PATTERN_BYTES_MAX {
        return Err(CmdError::Other(format!("LIMIT pattern-bytes limit exceeded (max {PATTERN_BYTES_MAX})")));
    }
    Ok(())
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Parses an integer as Redis's `string2ll` does.
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() || text.len() > 20 || text.starts_with('+') || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if text.starts_with("-0") {
        return None;
    }
    text.parse().ok()
}

/// The arguments of one request after the command name.
#[derive(Debug)]
pub struct Args {
    args: Vec<Bytes>,
    pos: usize,
    /// Lowercase command name, for arity errors.
    name: String,
}

impl Args {
    /// Wraps a request (`args[0]` is the command name).
    pub fn new(args: Vec<Bytes>) -> Args {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        Args { args, pos: 1, name }
    }

    /// Every argument, the name included.
    pub fn all(&self) -> &[Bytes] {
        &self.args
    }

    /// Arguments after the name.
    pub fn len(&self) -> usize {
        self.args.len() - 1
    }

    /// No arguments after the name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Arguments not consumed yet.
    pub fn remaining(&self) -> usize {
        self.args.len() - self.pos
    }

    /// The arity error for this command.
    pub fn arity(&self) -> CmdError {
        CmdError::Arity(self.name.clone())
    }

    /// At least `n` arguments after the name.
    pub fn arity_min(&self, n: usize) -> Result<(), CmdError> {
        if self.len() < n {
            return Err(self.arity());
        }
        Ok(())
    }

    /// At most `n` arguments after the name.
    pub fn arity_max(&self, n: usize) -> Result<(), CmdError> {
        if self.len() > n {
            return Err(self.arity());
        }
        Ok(())
    }

    /// The next argument, if any.
    pub fn optional(&mut self) -> Option<Bytes> {
        let arg = self.args.get(self.pos).cloned();
        if arg.is_some() {
            self.pos += 1;
        }
        arg
    }

    /// The next argument; missing is an arity error.
    pub fn bytes(&mut self) -> Result<Bytes, CmdError> {
        self.optional().ok_or_else(|| self.arity())
    }

    /// The next argument as an integer.
    pub fn i64(&mut self) -> Result<i64, CmdError> {
        let arg = self.bytes()?;
        parse_i64(&arg).ok_or(CmdError::NotInteger)
    }

    /// The next argument uppercased (for keywords).
    pub fn keyword(&mut self) -> Option<Vec<u8>> {
        self.optional().map(|a| a.to_ascii_uppercase())
    }

    /// Everything not consumed yet.
    pub fn rest(&mut self) -> Vec<Bytes> {
        let rest = self.args[self.pos..].to_vec();
        self.pos = self.args.len();
        rest
    }

    /// Extra arguments are a syntax error.
    pub fn finish(&self) -> Result<(), CmdError> {
        if self.pos < self.args.len() {
            return Err(CmdError::Syntax);
        }
        Ok(())
    }
}
