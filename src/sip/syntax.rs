//! Character classes and a small byte cursor shared by the SIP parsers.
//!
//! Everything here follows the ABNF of RFC 3261 section 25. Header values are scanned in place:
//! a folded line (CRLF followed by SP or HTAB) is treated as whitespace by [`Cursor::skip_ws`],
//! so typed views can borrow from the receive buffer without unfolding it first.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(missing_docs)]

use std::borrow::Cow;

/// `token` characters (RFC 3261 section 25.1).
pub(crate) fn is_token(byte: u8) -> bool {
    TOKEN.get(usize::from(byte)).copied().unwrap_or(false)
}

/// [`is_token`] as a table: the parsers ask it for every byte of every name and token.
// Evaluated at compile time over its own bounds; no network data reaches this indexing.
#[allow(clippy::indexing_slicing)]
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~');
        byte += 1;
    }
    table
};

/// `word` characters, used by Call-ID.
pub(crate) fn is_word(byte: u8) -> bool {
    is_token(byte)
        || matches!(
            byte,
            b'(' | b')' | b'<' | b'>' | b':' | b'\\' | b'"' | b'/' | b'[' | b']' | b'?' | b'{' | b'}'
        )
}

/// Whitespace inside a header value: SP, HTAB and the CR/LF of a folded line.
pub(crate) fn is_ws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// Trims [`is_ws`] bytes from both ends.
pub(crate) fn trim_ws(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| !is_ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|&b| !is_ws(b)).map_or(start, |last| last + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// Views bytes already checked to be ASCII as `&str`.
pub(crate) fn ascii_str(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

/// `part`, a sub-slice of `whole`'s bytes, as a `&str` borrowed from `whole`: the text was
/// validated once, its pieces need not be again. `None` when `part` does not lie within `whole`.
pub(crate) fn substr<'a>(whole: &'a str, part: &[u8]) -> Option<&'a str> {
    let offset = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    whole.get(offset..offset.checked_add(part.len())?)
}

/// Parses a run of ASCII digits into a `u64`, refusing empty input and overflow.
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
    }
    Some(value)
}

/// Parses a run of ASCII digits into a `u32`.
pub(crate) fn parse_u32(digits: &[u8]) -> Option<u32> {
    parse_u64(digits).and_then(|value| u32::try_from(value).ok())
}

/// Value of one hex digit.
pub(crate) fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Iterates the bytes of a `%`-escaped string, decoded. A `%` that does not start a valid escape
/// is yielded as itself (callers validate escapes separately where the grammar requires it).
pub(crate) fn unescaped_bytes(input: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut index = 0;
    std::iter::from_fn(move || {
        let byte = *input.get(index)?;
        if byte == b'%' {
            let high = input.get(index + 1).copied().and_then(hex_value);
            let low = input.get(index + 2).copied().and_then(hex_value);
            if let (Some(high), Some(low)) = (high, low) {
                index += 3;
                return Some(high << 4 | low);
            }
        }
        index += 1;
        Some(byte)
    })
}

/// Decodes `%HH` escapes, borrowing when there are none.
pub(crate) fn unescape(input: &[u8]) -> Cow<'_, [u8]> {
    if input.contains(&b'%') {
        Cow::Owned(unescaped_bytes(input).collect())
    } else {
        Cow::Borrowed(input)
    }
}

/// Compares an escaped string with a plain one after decoding escapes, ASCII case-insensitively.
pub(crate) fn unescaped_eq_ignore_case(escaped: &[u8], plain: &[u8]) -> bool {
    let mut decoded = unescaped_bytes(escaped);
    let mut expected = plain.iter();
    loop {
        match (decoded.next(), expected.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => {}
            _ => return false,
        }
    }
}

/// True when every `%` in `input` starts a two-hex-digit escape.
pub(crate) fn escapes_valid(input: &[u8]) -> bool {
    let mut index = 0;
    while let Some(&byte) = input.get(index) {
        if byte == b'%' {
            let high = input.get(index + 1).copied().and_then(hex_value);
            let low = input.get(index + 2).copied().and_then(hex_value);
            if high.is_none() || low.is_none() {
                return false;
            }
            index += 3;
        } else {
            index += 1;
        }
    }
    true
}

/// Removes the surrounding quotes of a `quoted-string` and resolves its `quoted-pair`s.
///
/// Input that is not quoted is returned unchanged. Folded line breaks inside the quotes are
/// returned as they were received.
pub(crate) fn unquote(raw: &[u8]) -> Cow<'_, [u8]> {
    let inner = match raw {
        [b'"', inner @ .., b'"'] => inner,
        _ => return Cow::Borrowed(raw),
    };
    if !inner.contains(&b'\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'\\' {
            if let Some(&escaped) = bytes.next() {
                out.push(escaped);
            }
        } else {
            out.push(byte);
        }
    }
    Cow::Owned(out)
}

/// Replaces each run of linear white space (including folds) with one SP and trims both ends,
/// borrowing when the value holds no line break and no doubled white space.
pub(crate) fn unfold(raw: &[u8]) -> Cow<'_, [u8]> {
    let trimmed = trim_ws(raw);
    // Most values hold no line break: one vectorised scan says so.
    if memchr::memchr2(b'\r', b'\n', trimmed).is_none() {
        return Cow::Borrowed(trimmed);
    }
    let mut out = Vec::with_capacity(trimmed.len());
    let mut in_ws = false;
    for &byte in trimmed {
        if is_ws(byte) {
            if !in_ws {
                out.push(b' ');
            }
            in_ws = true;
        } else {
            out.push(byte);
            in_ws = false;
        }
    }
    Cow::Owned(out)
}

/// Splits a header value at the commas that separate list elements: commas inside a
/// `quoted-string` or between `<` and `>` do not split. Elements are trimmed; empty elements are
/// yielded so that callers can reject them where the grammar forbids them.
pub(crate) fn split_list(value: &[u8]) -> ListSplit<'_> {
    ListSplit { rest: Some(value) }
}

/// Iterator returned by [`split_list`].
#[derive(Clone, Debug)]
pub(crate) struct ListSplit<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for ListSplit<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let mut in_quotes = false;
        let mut in_angle = false;
        let mut escaped = false;
        for (index, &byte) in rest.iter().enumerate() {
            if in_quotes {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    in_quotes = false;
                }
                continue;
            }
            match byte {
                b'"' => in_quotes = true,
                b'<' => in_angle = true,
                b'>' => in_angle = false,
                b',' if !in_angle => {
                    let item = rest.get(..index).unwrap_or_default();
                    self.rest = rest.get(index + 1..);
                    return Some(trim_ws(item));
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(trim_ws(rest))
    }
}

/// A forward-only reader over a byte slice. Every access is bounds-checked; reading past the
/// end yields `None`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor<'a> {
    input: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    /// Starts reading at the beginning of `input`.
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { input, position: 0 }
    }

    /// The next byte, without consuming it.
    pub(crate) fn peek(&self) -> Option<u8> {
        self.input.get(self.position).copied()
    }

    /// Consumes and returns the next byte.
    pub(crate) fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.position += 1;
        Some(byte)
    }

    /// Consumes `count` bytes (or what is left, if fewer).
    pub(crate) fn advance(&mut self, count: usize) {
        self.position = self.position.saturating_add(count).min(self.input.len());
    }

    /// Consumes `byte` if it is next.
    pub(crate) fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    /// True when every byte has been consumed.
    pub(crate) fn at_end(&self) -> bool {
        self.position >= self.input.len()
    }

    /// The bytes not consumed yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.input.get(self.position..).unwrap_or_default()
    }

    /// Skips SP, HTAB and folded line breaks.
    pub(crate) fn skip_ws(&mut self) {
        self.take_while(is_ws);
    }

    /// Consumes bytes while `predicate` holds and returns them.
    pub(crate) fn take_while(&mut self, predicate: impl Fn(u8) -> bool) -> &'a [u8] {
        // One scan of the rest (no bounds check per byte).
        let rest = self.rest();
        let count = rest.iter().position(|&byte| !predicate(byte)).unwrap_or(rest.len());
        self.position += count;
        rest.get(..count).unwrap_or_default()
    }

    /// Consumes a non-empty `token`.
    pub(crate) fn token(&mut self) -> Option<&'a str> {
        let token = self.take_while(is_token);
        if token.is_empty() {
            None
        } else {
            // Token characters are ASCII: one UTF-8 check is all it takes.
            std::str::from_utf8(token).ok()
        }
    }

    /// Consumes a `quoted-string` (the cursor must be on the opening quote) and returns it with
    /// its quotes. `None` when the quote is not closed or holds a byte the grammar forbids.
    pub(crate) fn quoted_string(&mut self) -> Option<&'a [u8]> {
        let start = self.position;
        if !self.eat(b'"') {
            return None;
        }
        loop {
            match self.bump()? {
                b'"' => return self.input.get(start..self.position),
                b'\\' => {
                    // quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
                    let escaped = self.bump()?;
                    if escaped == b'\r' || escaped == b'\n' || escaped > 0x7F {
                        return None;
                    }
                }
                b'\r' | b'\n' => {
                    // Only allowed as part of a fold: CRLF (or LF) followed by SP / HTAB.
                    self.eat(b'\n');
                    if !matches!(self.peek(), Some(b' ' | b'\t')) {
                        return None;
                    }
                }
                byte if byte < 0x20 && byte != b'\t' => return None,
                0x7F => return None,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn split_list_respects_quotes_and_angles() {
        let items: Vec<&[u8]> = split_list(b"\"a,b\" <sip:x,y@h>;p=1 , <sip:z@h> ,, last").collect();
        assert_eq!(items, vec![&b"\"a,b\" <sip:x,y@h>;p=1"[..], b"<sip:z@h>", b"", b"last"]);
    }

    #[test]
    fn unquote_resolves_pairs() {
        assert_eq!(&*unquote(br#""J Rosenberg \\\"""#), br#"J Rosenberg \""#);
        assert_eq!(&*unquote(br#""plain""#), b"plain");
    }

    #[test]
    fn unfold_collapses_folds() {
        assert_eq!(
            &*unfold(b"newfangled value\r\n continued newfangled value"),
            b"newfangled value continued newfangled value"
        );
        assert!(matches!(unfold(b"  simple  "), Cow::Borrowed(b"simple")));
    }

    #[test]
    fn unescape_and_compare() {
        assert_eq!(&*unescape(b"%6C%72"), b"lr");
        assert!(unescaped_eq_ignore_case(b"n%61me", b"NAME"));
        assert!(!escapes_valid(b"%Z1"));
        assert!(escapes_valid(b"a%20b"));
    }

    #[test]
    fn substr_borrows_from_the_whole() {
        let whole = "sip:alice@example.com";
        let bytes = whole.as_bytes();
        assert_eq!(substr(whole, &bytes[4..9]), Some("alice"));
        assert_eq!(substr(whole, &bytes[21..]), Some(""));
        assert_eq!(substr(whole, b"elsewhere"), None);
    }

    #[test]
    fn numbers_refuse_overflow() {
        assert_eq!(parse_u32(b"0009"), Some(9));
        assert_eq!(parse_u32(b"36893488147419103232"), None);
        assert_eq!(parse_u32(b""), None);
        assert_eq!(parse_u32(b"-1"), None);
    }
}
