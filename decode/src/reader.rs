//! A JSON reader over one message's text: a cursor that reads strings,
//! numbers and literals where the decoder asks for a value, and skips whole
//! values it does not need while still checking their grammar.
//!
//! It is the decoder's tokenizer, written for its one access pattern rather
//! than driven through serde's visitor: the message is read once, front to
//! back; strings without escapes are borrowed from it; a string is scanned
//! eight bytes at a time for its closing quote, an escape or a control
//! character; skipped numbers are checked, never converted. Skipping keeps
//! its open containers on a heap stack of one byte per level, so hostile
//! nesting costs memory bounded by the message size, never the call stack.
//!
//! What it accepts is RFC 8259 JSON, as serde_json does: decoded strings
//! (keys of the objects along configured paths, and values read into
//! columns) must not hold a lone UTF-16 surrogate escape; skipped strings
//! only need well-formed escapes.

use std::borrow::Cow;

/// A JSON value as found, before conversion to a column type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'a, str>),
    Object,
    Array,
}

impl Raw<'_> {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Raw::Null => "null",
            Raw::Bool(_) => "a boolean",
            Raw::I64(_) | Raw::U64(_) => "an integer",
            Raw::F64(_) => "a non-integer number",
            Raw::Str(_) => "a string",
            Raw::Object => "an object",
            Raw::Array => "an array",
        }
    }
}

/// Text that is not JSON: what was expected, and the byte offset where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub expected: &'static str,
    pub at: usize,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "expected {} at byte {}", self.expected, self.at)
    }
}

type Result<T> = std::result::Result<T, SyntaxError>;

pub(crate) struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `chunk` (little-endian) that is a quote, a
/// backslash or a control character. Exact up to the lowest such byte,
/// which is all a scan uses: a borrow only runs upwards from a true match.
fn specials(chunk: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let control = chunk.wrapping_sub(ONES * 0x20) & !chunk & HIGHS;
    zero(chunk ^ (ONES * u64::from(b'"'))) | zero(chunk ^ (ONES * u64::from(b'\\'))) | control
}

impl<'a> Reader<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn error<T>(&self, expected: &'static str) -> Result<T> {
        Err(SyntaxError { expected, at: self.pos })
    }

    /// The next byte that is not whitespace, without consuming it.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        let bytes = self.bytes();
        while let Some(&b) = bytes.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    /// Consumes `byte` (after whitespace), or fails expecting `what`.
    pub(crate) fn expect(&mut self, byte: u8, what: &'static str) -> Result<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            self.error(what)
        }
    }

    /// After the last value: only whitespace may follow.
    pub(crate) fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.error("the end of the message"),
        }
    }

    /// After a member's value: `true` at a comma (another member follows),
    /// `false` at the closing brace.
    pub(crate) fn next_member(&mut self) -> Result<bool> {
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b'}') => {
                self.pos += 1;
                Ok(false)
            }
            _ => self.error("`,` or `}`"),
        }
    }

    /// Just past an object's `{`: `true` when it is empty (its `}` consumed).
    pub(crate) fn empty_object(&mut self) -> bool {
        if self.peek() == Some(b'}') {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A key and its colon; the reader is left before the value.
    #[inline(always)]
    pub(crate) fn key(&mut self) -> Result<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return self.error("a key");
        }
        let key = self.string()?;
        self.expect(b':', "`:`")?;
        Ok(key)
    }

    /// A scalar value, decoded; an object or array is skipped and reported
    /// as such. Inlined, as are the common paths of what it reads: a value
    /// returned through memory is stored in parts and loaded whole, which
    /// stalls on store forwarding at every field.
    #[inline(always)]
    pub(crate) fn value(&mut self) -> Result<Raw<'a>> {
        Ok(match self.peek() {
            Some(b'"') => Raw::Str(self.string()?),
            Some(b'{') => {
                self.skip()?;
                Raw::Object
            }
            Some(b'[') => {
                self.skip()?;
                Raw::Array
            }
            Some(b't') => self.literal("true", Raw::Bool(true))?,
            Some(b'f') => self.literal("false", Raw::Bool(false))?,
            Some(b'n') => self.literal("null", Raw::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return self.error("a value"),
        })
    }

    #[inline(always)]
    fn literal(&mut self, word: &'static str, raw: Raw<'a>) -> Result<Raw<'a>> {
        if self.bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(raw)
        } else {
            self.error("a value")
        }
    }

    /// Skips one value of any kind, checking its grammar. Iterative: each
    /// open container is one byte on `open`, allocated only when nested.
    pub(crate) fn skip(&mut self) -> Result<()> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            // A value.
            match self.peek() {
                Some(b'"') => self.skip_string()?,
                Some(b'{') => {
                    self.pos += 1;
                    if !self.empty_object() {
                        open.push(b'}');
                        self.skip_key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(b']');
                        continue;
                    }
                }
                Some(b't') => drop(self.literal("true", Raw::Null)?),
                Some(b'f') => drop(self.literal("false", Raw::Null)?),
                Some(b'n') => drop(self.literal("null", Raw::Null)?),
                Some(b'-' | b'0'..=b'9') => drop(self.number_grammar()?),
                _ => return self.error("a value"),
            }
            // What follows it: the next element, or closing brackets.
            loop {
                let Some(&close) = open.last() else { return Ok(()) };
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if close == b'}' {
                            self.skip_key()?;
                        }
                        break;
                    }
                    Some(b) if b == close => {
                        self.pos += 1;
                        open.pop();
                    }
                    _ => return self.error(if close == b'}' { "`,` or `}`" } else { "`,` or `]`" }),
                }
            }
        }
    }

    fn skip_key(&mut self) -> Result<()> {
        if self.peek() != Some(b'"') {
            return self.error("a key");
        }
        self.skip_string()?;
        self.expect(b':', "`:`")
    }

    /// The position of the first quote, backslash or control character at
    /// or after `from`; the message's length if there is none.
    fn scan(&self, mut from: usize) -> usize {
        let bytes = self.bytes();
        while let Some(chunk) = bytes.get(from..from + 8) {
            let chunk = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let found = specials(chunk);
            if found != 0 {
                return from + (found.trailing_zeros() / 8) as usize;
            }
            from += 8;
        }
        while let Some(&b) = bytes.get(from) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                return from;
            }
            from += 1;
        }
        from
    }

    /// A string at its opening quote, decoded: borrowed from the message
    /// unless it holds escapes.
    #[inline(always)]
    fn string(&mut self) -> Result<Cow<'a, str>> {
        let start = self.pos + 1;
        let at = self.scan(start);
        if self.bytes().get(at) == Some(&b'"') {
            self.pos = at + 1;
            // Quotes are ASCII, so both ends are character boundaries.
            return Ok(Cow::Borrowed(&self.text[start..at]));
        }
        self.escaped_string(start, at)
    }

    /// The rest of a string from its first escape (or fault) at `at`.
    #[cold]
    #[inline(never)]
    fn escaped_string(&mut self, start: usize, mut at: usize) -> Result<Cow<'a, str>> {
        let text = self.text;
        let mut owned = String::new();
        let mut from = start;
        loop {
            owned.push_str(&text[from..at]);
            match self.bytes().get(at) {
                Some(b'"') => {
                    self.pos = at + 1;
                    return Ok(Cow::Owned(owned));
                }
                Some(b'\\') => {
                    self.pos = at;
                    at = self.unescape(at + 1, &mut owned)?;
                }
                _ => {
                    self.pos = at;
                    return self.error("a closing quote (control characters must be escaped)");
                }
            }
            from = at;
            at = self.scan(from);
        }
    }

    /// Skips a string at its opening quote, checking its escapes.
    fn skip_string(&mut self) -> Result<()> {
        let mut at = self.scan(self.pos + 1);
        loop {
            match self.bytes().get(at) {
                Some(b'"') => {
                    self.pos = at + 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos = at;
                    at = match self.bytes().get(at + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => at + 2,
                        Some(b'u') => {
                            self.hex4(at + 2)?;
                            at + 6
                        }
                        _ => return self.error("an escape"),
                    };
                }
                _ => {
                    self.pos = at;
                    return self.error("a closing quote (control characters must be escaped)");
                }
            }
            at = self.scan(at);
        }
    }

    /// Four hex digits at `at`.
    fn hex4(&mut self, at: usize) -> Result<u16> {
        let digits = self.bytes().get(at..at + 4).unwrap_or_default();
        let mut value = 0u16;
        for (i, &d) in digits.iter().enumerate() {
            let Some(v) = (d as char).to_digit(16) else {
                self.pos = at + i;
                return self.error("a hex digit");
            };
            value = value << 4 | v as u16;
        }
        if digits.len() < 4 {
            self.pos = at + digits.len();
            return self.error("a hex digit");
        }
        Ok(value)
    }

    /// The escape after the backslash at `at - 1`, appended to `out`;
    /// returns the position after it.
    fn unescape(&mut self, at: usize, out: &mut String) -> Result<usize> {
        let simple = match self.bytes().get(at) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let unit = self.hex4(at + 1)?;
                let (c, next) = match unit {
                    0xD800..=0xDBFF => {
                        if self.bytes().get(at + 5..at + 7) != Some(b"\\u") {
                            self.pos = at + 5;
                            return self.error("the low surrogate escape of a pair");
                        }
                        let low = self.hex4(at + 7)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            self.pos = at + 7;
                            return self.error("a low surrogate");
                        }
                        let code = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                        (char::from_u32(code), at + 11)
                    }
                    0xDC00..=0xDFFF => (None, at + 5),
                    _ => (char::from_u32(u32::from(unit)), at + 5),
                };
                let Some(c) = c else {
                    self.pos = at + 1;
                    return self.error("a character, not a lone surrogate");
                };
                out.push(c);
                return Ok(next);
            }
            _ => {
                self.pos = at;
                return self.error("an escape");
            }
        };
        out.push(simple);
        Ok(at + 1)
    }

    /// A number, converted: integers to `I64` (negative or up to
    /// `i64::MAX`) or `U64`; anything with a fraction or exponent, and
    /// integers beyond 64 bits, to `F64` (correctly rounded; infinite when
    /// out of range, which the column conversion refuses).
    #[inline(always)]
    fn number(&mut self) -> Result<Raw<'a>> {
        let start = self.pos;
        let (integer, magnitude) = self.number_grammar()?;
        let negative = self.bytes()[start] == b'-';
        Ok(match magnitude {
            Some(m) if integer && !negative && m <= i64::MAX as u64 => Raw::I64(m as i64),
            Some(m) if integer && !negative => Raw::U64(m),
            Some(m) if integer && m <= i64::MAX as u64 + 1 => Raw::I64((m as i64).wrapping_neg()),
            _ => self.float(start)?,
        })
    }

    /// The number from `start` to here, as a float.
    #[inline(never)]
    fn float(&self, start: usize) -> Result<Raw<'a>> {
        let parsed = self.text[start..self.pos].parse();
        Ok(Raw::F64(parsed.map_err(|_| SyntaxError { expected: "a number", at: start })?))
    }

    /// Reads a number's grammar: whether it is an integer (no fraction or
    /// exponent) and its magnitude when that fits 64 bits.
    #[inline(always)]
    fn number_grammar(&mut self) -> Result<(bool, Option<u64>)> {
        let bytes = self.bytes();
        if bytes[self.pos] == b'-' {
            self.pos += 1;
        }
        let mut magnitude = Some(0u64);
        match bytes.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(&d @ b'0'..=b'9') = bytes.get(self.pos) {
                    magnitude =
                        magnitude.and_then(|m| m.checked_mul(10)).and_then(|m| m.checked_add(u64::from(d - b'0')));
                    self.pos += 1;
                }
            }
            _ => return self.error("a digit"),
        }
        let mut integer = true;
        if bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            integer = false;
            self.digits()?;
        }
        if matches!(bytes.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            integer = false;
            if matches!(bytes.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.digits()?;
        }
        Ok((integer, magnitude))
    }

    /// One or more digits.
    fn digits(&mut self) -> Result<()> {
        let bytes = self.bytes();
        if !bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            return self.error("a digit");
        }
        while bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Result<Raw<'_>> {
        let mut reader = Reader::new(text);
        let raw = reader.value()?;
        reader.end()?;
        Ok(raw)
    }

    fn skips(text: &str) -> bool {
        let mut reader = Reader::new(text);
        reader.skip().and_then(|()| reader.end()).is_ok()
    }

    #[test]
    fn numbers_convert_as_json_defines_them() {
        assert_eq!(value("0"), Ok(Raw::I64(0)));
        assert_eq!(value("-0"), Ok(Raw::I64(0)));
        assert_eq!(value("9223372036854775807"), Ok(Raw::I64(i64::MAX)));
        assert_eq!(value("9223372036854775808"), Ok(Raw::U64(1 << 63)));
        assert_eq!(value("-9223372036854775808"), Ok(Raw::I64(i64::MIN)));
        assert_eq!(value("18446744073709551615"), Ok(Raw::U64(u64::MAX)));
        assert_eq!(value("18446744073709551616"), Ok(Raw::F64(18446744073709551616.0)));
        assert_eq!(value("-9223372036854775809"), Ok(Raw::F64(-9223372036854775809.0)));
        assert_eq!(value("1.5e3"), Ok(Raw::F64(1500.0)));
        assert_eq!(value("1E-2"), Ok(Raw::F64(0.01)));
        assert_eq!(value("1e400"), Ok(Raw::F64(f64::INFINITY)));
        for bad in ["01", "1.", ".5", "-", "1e", "1e+", "+1", "0x10", "1.e3", "--1"] {
            assert!(value(bad).is_err(), "{bad} is not a JSON number");
            assert!(!skips(bad), "{bad} is not a JSON number");
        }
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        assert!(matches!(value(r#""plain text, long enough for a chunk""#), Ok(Raw::Str(Cow::Borrowed(_)))));
        assert_eq!(
            value(r#""a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00 end""#),
            Ok(Raw::Str(Cow::Owned("a\"b\\c/d\u{8}\u{c}\n\r\t\u{e9}\u{1f600} end".into())))
        );
        for bad in
            [r#""\ud800""#, r#""\udc00""#, r#""\ud800\u0041""#, r#""\x""#, r#""\u12""#, "\"a\u{1}b\"", r#""open"#]
        {
            assert!(value(bad).is_err(), "{bad} is not a decodable string");
        }
        // Skipped strings need only well-formed escapes, as serde_json's.
        assert!(skips(r#""\ud800""#));
        for bad in [r#""\x""#, r#""\u12""#, "\"a\u{1}b\"", r#""open"#] {
            assert!(!skips(bad), "{bad} is not a JSON string");
        }
    }

    #[test]
    fn skipping_checks_grammar_at_any_depth() {
        for good in ["{}", "[]", r#"{"a":[1,{"b":null}],"c":"d"}"#, " [ true , false , null , -1.5e-3 ] ", "[[[[]]]]"] {
            assert!(skips(good), "{good} is JSON");
        }
        for bad in
            ["{", "[", "{]", "[}", r#"{"a"}"#, r#"{"a":}"#, r#"{"a":1,}"#, "[1,]", "[1 2]", r#"{1:2}"#, "tru", "nul"]
        {
            assert!(!skips(bad), "{bad} is not JSON");
        }
        let deep = format!("{}0{}", "[{\"k\":".repeat(200_000), "}]".repeat(200_000));
        assert!(skips(&deep));
        assert!(!skips(&deep[..deep.len() - 1]));
    }

    #[test]
    fn special_bytes_are_found_in_every_lane() {
        for lane in 0..8 {
            for special in [b'"', b'\\', 0x00, 0x1f] {
                let mut bytes = [b'a'; 8];
                bytes[lane] = special;
                assert_eq!(specials(u64::from_le_bytes(bytes)).trailing_zeros() / 8, lane as u32);
            }
            let mut bytes = [0xC3u8; 8];
            bytes[lane] = b' ';
            assert_eq!(specials(u64::from_le_bytes(bytes)), 0, "UTF-8 bytes and spaces are ordinary");
        }
    }
}
