//! XML-RPC as LAVA's clients speak it: a bounded reader of `methodCall` documents and a
//! writer of `methodResponse` documents (values or faults).
//!
//! Invariants:
//! - Input is untrusted. No DTD is accepted (a `<!DOCTYPE` is refused, so no entity can be
//!   declared, let alone expanded); the only references are XML's five predefined entities
//!   and character references. Nesting is at most [`MAX_DEPTH`] values deep and a call holds
//!   at most [`MAX_VALUES`] values, so a hostile document is refused in time and memory
//!   linear in its size (the body itself is bounded by the route).
//! - The reader accepts what Python's `xmlrpc.client` sends (typed values, `<nil/>`,
//!   `<i8>`, untyped text as a string); the writer produces what it parses, including
//!   `<nil/>` (LAVA's servers run with `allow_none`) and `dateTime.iso8601` in UTC.

use base64::Engine;
use quick_xml::Reader;
use quick_xml::events::Event;
use std::fmt::Write;

/// Deepest nesting of arrays and structs in a call.
pub const MAX_DEPTH: usize = 32;
/// Most values in one call.
pub const MAX_VALUES: usize = 10_000;

/// One XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Bool(bool),
    String(String),
    Double(f64),
    /// `dateTime.iso8601`, kept as the text (`20260102T03:04:05`).
    DateTime(String),
    Base64(Vec<u8>),
    Struct(Vec<(String, Value)>),
    Array(Vec<Value>),
    Nil,
}

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// A string, or nil for `None`.
    pub fn opt_str(s: Option<impl Into<String>>) -> Value {
        s.map_or(Value::Nil, |s| Value::String(s.into()))
    }

    /// A struct from pairs.
    pub fn fields(pairs: Vec<(&str, Value)>) -> Value {
        Value::Struct(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }
}

/// A parsed `methodCall`.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodCall {
    pub method: String,
    pub params: Vec<Value>,
}

/// Why a document is not a method call; the text is the fault message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an XML-RPC call: {0}")]
pub struct ParseError(pub String);

fn bad(message: impl Into<String>) -> ParseError {
    ParseError(message.into())
}

/// What the parser sees: elements and text, entities resolved, nothing else.
#[derive(Debug, PartialEq)]
enum Token {
    Open(String),
    /// `<x/>`: an open immediately closed.
    Empty(String),
    Close(String),
    Text(String),
    End,
}

struct Tokens<'a> {
    reader: Reader<&'a [u8]>,
    /// Tokens read ahead, next first.
    ahead: std::collections::VecDeque<Token>,
    values: usize,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Tokens<'a> {
        let mut reader = Reader::from_str(text);
        reader.config_mut().trim_text(false);
        reader.config_mut().check_end_names = true;
        Tokens {
            reader,
            ahead: std::collections::VecDeque::new(),
            values: 0,
        }
    }

    /// The next token; adjacent text and references are joined into one text.
    fn next(&mut self) -> Result<Token, ParseError> {
        if let Some(t) = self.ahead.pop_front() {
            return Ok(t);
        }
        let mut text: Option<String> = None;
        loop {
            let event = self
                .reader
                .read_event()
                .map_err(|e| bad(format!("XML: {e}")))?;
            let token = match event {
                Event::Start(e) => Token::Open(name(e.local_name().as_ref())?),
                Event::Empty(e) => Token::Empty(name(e.local_name().as_ref())?),
                Event::End(e) => Token::Close(name(e.local_name().as_ref())?),
                Event::Text(e) => {
                    let s = e.decode().map_err(|e| bad(format!("XML text: {e}")))?;
                    text.get_or_insert_with(String::new).push_str(&s);
                    continue;
                }
                Event::CData(e) => {
                    let s = e.decode().map_err(|e| bad(format!("XML CDATA: {e}")))?;
                    text.get_or_insert_with(String::new).push_str(&s);
                    continue;
                }
                Event::GeneralRef(r) => {
                    let c = match r.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        Ok(None) => {
                            let n = r.decode().map_err(|e| bad(format!("XML: {e}")))?;
                            match n.as_ref() {
                                "lt" => '<',
                                "gt" => '>',
                                "amp" => '&',
                                "apos" => '\'',
                                "quot" => '"',
                                other => {
                                    return Err(bad(format!(
                                        "entity &{other}; is not one of XML's predefined entities (no DTD is accepted)"
                                    )));
                                }
                            }
                        }
                        Err(e) => return Err(bad(format!("XML character reference: {e}"))),
                    };
                    text.get_or_insert_with(String::new).push(c);
                    continue;
                }
                Event::DocType(_) => {
                    return Err(bad("a DOCTYPE is not accepted"));
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) => continue,
                Event::Eof => Token::End,
            };
            if let Some(text) = text {
                self.ahead.push_front(token);
                return Ok(Token::Text(text));
            }
            return Ok(token);
        }
    }

    fn peek(&mut self) -> Result<&Token, ParseError> {
        if self.ahead.is_empty() {
            let t = self.next()?;
            self.ahead.push_front(t);
        }
        Ok(self.ahead.front().expect("a token was just read ahead"))
    }

    /// The next token that is not whitespace-only text.
    fn next_tag(&mut self) -> Result<Token, ParseError> {
        loop {
            match self.next()? {
                Token::Text(t) if t.trim().is_empty() => continue,
                other => return Ok(other),
            }
        }
    }

    fn skip_space(&mut self) -> Result<(), ParseError> {
        while let Token::Text(t) = self.peek()? {
            if !t.trim().is_empty() {
                break;
            }
            self.next()?;
        }
        Ok(())
    }

    fn open(&mut self, want: &str) -> Result<bool, ParseError> {
        match self.next_tag()? {
            Token::Open(n) if n == want => Ok(true),
            Token::Empty(n) if n == want => Ok(false),
            other => Err(bad(format!(
                "expected <{want}>, found {}",
                describe(&other)
            ))),
        }
    }

    fn close(&mut self, want: &str) -> Result<(), ParseError> {
        match self.next_tag()? {
            Token::Close(n) if n == want => Ok(()),
            other => Err(bad(format!(
                "expected </{want}>, found {}",
                describe(&other)
            ))),
        }
    }

    /// Text up to `</want>` (empty when the element closes at once).
    fn text_until(&mut self, want: &str) -> Result<String, ParseError> {
        match self.next()? {
            Token::Text(t) => {
                self.close(want)?;
                Ok(t)
            }
            Token::Close(n) if n == want => Ok(String::new()),
            other => Err(bad(format!(
                "expected text in <{want}>, found {}",
                describe(&other)
            ))),
        }
    }
}

fn name(raw: &[u8]) -> Result<String, ParseError> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| bad("element name is not UTF-8"))
}

fn describe(t: &Token) -> String {
    match t {
        Token::Open(n) => format!("<{n}>"),
        Token::Empty(n) => format!("<{n}/>"),
        Token::Close(n) => format!("</{n}>"),
        Token::Text(_) => "text".to_owned(),
        Token::End => "the end of the document".to_owned(),
    }
}

/// Parses a `methodCall` document.
pub fn parse_call(text: &str) -> Result<MethodCall, ParseError> {
    let mut t = Tokens::new(text);
    if !t.open("methodCall")? {
        return Err(bad("empty <methodCall/>"));
    }
    if !t.open("methodName")? {
        return Err(bad("empty <methodName/>"));
    }
    let method = t.text_until("methodName")?.trim().to_owned();
    if method.is_empty() || method.len() > 128 {
        return Err(bad("methodName: must be 1 to 128 characters"));
    }
    let mut params = Vec::new();
    match t.next_tag()? {
        Token::Close(n) if n == "methodCall" => {}
        Token::Empty(n) if n == "params" => t.close("methodCall")?,
        Token::Open(n) if n == "params" => {
            loop {
                match t.next_tag()? {
                    Token::Close(n) if n == "params" => break,
                    Token::Open(n) if n == "param" => {
                        params.push(value(&mut t, 0)?);
                        t.close("param")?;
                    }
                    other => {
                        return Err(bad(format!("expected <param>, found {}", describe(&other))));
                    }
                }
            }
            t.close("methodCall")?;
        }
        other => {
            return Err(bad(format!(
                "expected <params>, found {}",
                describe(&other)
            )));
        }
    }
    match t.next_tag()? {
        Token::End => Ok(MethodCall { method, params }),
        other => Err(bad(format!("{} after </methodCall>", describe(&other)))),
    }
}

/// One `<value>`, opened here.
fn value(t: &mut Tokens<'_>, depth: usize) -> Result<Value, ParseError> {
    if depth > MAX_DEPTH {
        return Err(bad(format!("values nest deeper than {MAX_DEPTH}")));
    }
    t.values += 1;
    if t.values > MAX_VALUES {
        return Err(bad(format!("more than {MAX_VALUES} values")));
    }
    if !t.open("value")? {
        return Ok(Value::String(String::new()));
    }
    // Untyped text is a string; leading whitespace before a type element is not.
    let first = t.next()?;
    let (kind, empty) = match first {
        Token::Close(n) if n == "value" => return Ok(Value::String(String::new())),
        Token::Text(s) => match t.peek()? {
            Token::Close(n) if n == "value" => {
                t.next()?;
                return Ok(Value::String(s));
            }
            _ if s.trim().is_empty() => match t.next()? {
                Token::Open(k) => (k, false),
                Token::Empty(k) => (k, true),
                other => {
                    return Err(bad(format!(
                        "expected a type in <value>, found {}",
                        describe(&other)
                    )));
                }
            },
            _ => return Err(bad("text mixed with elements in <value>")),
        },
        Token::Open(k) => (k, false),
        Token::Empty(k) => (k, true),
        other => {
            return Err(bad(format!(
                "expected a type in <value>, found {}",
                describe(&other)
            )));
        }
    };
    let scalar = |t: &mut Tokens<'_>| -> Result<String, ParseError> {
        if empty {
            Ok(String::new())
        } else {
            t.text_until(&kind)
        }
    };
    let v = match kind.as_str() {
        "i4" | "int" | "i8" => {
            let s = scalar(t)?;
            Value::Int(
                s.trim()
                    .parse()
                    .map_err(|_| bad(format!("<{kind}>: {:?} is not an integer", short(&s))))?,
            )
        }
        "boolean" => match scalar(t)?.trim() {
            "1" => Value::Bool(true),
            "0" => Value::Bool(false),
            other => return Err(bad(format!("<boolean>: {:?} is not 0 or 1", short(other)))),
        },
        "string" => Value::String(scalar(t)?),
        "double" => {
            let s = scalar(t)?;
            Value::Double(
                s.trim()
                    .parse()
                    .map_err(|_| bad(format!("<double>: {:?} is not a number", short(&s))))?,
            )
        }
        "dateTime.iso8601" => Value::DateTime(scalar(t)?.trim().to_owned()),
        "base64" => {
            let s: String = scalar(t)?
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            Value::Base64(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| bad(format!("<base64>: {e}")))?,
            )
        }
        "nil" => {
            if !empty {
                t.close("nil")?;
            }
            Value::Nil
        }
        "array" => {
            let mut items = Vec::new();
            if !empty {
                if t.open("data")? {
                    loop {
                        t.skip_space()?;
                        if matches!(t.peek()?, Token::Close(n) if n == "data") {
                            t.next()?;
                            break;
                        }
                        items.push(value(t, depth + 1)?);
                    }
                }
                t.close("array")?;
            }
            Value::Array(items)
        }
        "struct" => {
            let mut members = Vec::new();
            if !empty {
                loop {
                    match t.next_tag()? {
                        Token::Close(n) if n == "struct" => break,
                        Token::Open(n) if n == "member" => {
                            if !t.open("name")? {
                                return Err(bad("empty <name/> in a struct member"));
                            }
                            let key = t.text_until("name")?;
                            let v = value(t, depth + 1)?;
                            t.close("member")?;
                            members.push((key, v));
                        }
                        other => {
                            return Err(bad(format!(
                                "expected <member>, found {}",
                                describe(&other)
                            )));
                        }
                    }
                }
            }
            Value::Struct(members)
        }
        other => return Err(bad(format!("unknown value type <{}>", short(other)))),
    };
    t.close("value")?;
    Ok(v)
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Escapes text for element content. Characters XML 1.0 cannot carry (controls other than
/// tab, newline and carriage return) become U+FFFD: no client could parse them back.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

fn write_value(out: &mut String, v: &Value) {
    out.push_str("<value>");
    match v {
        Value::Int(i) => {
            if i32::try_from(*i).is_ok() {
                let _ = write!(out, "<int>{i}</int>");
            } else {
                let _ = write!(out, "<i8>{i}</i8>");
            }
        }
        Value::Bool(b) => {
            let _ = write!(out, "<boolean>{}</boolean>", u8::from(*b));
        }
        Value::String(s) => {
            out.push_str("<string>");
            escape_into(out, s);
            out.push_str("</string>");
        }
        Value::Double(d) => {
            let _ = write!(out, "<double>{d:?}</double>");
        }
        Value::DateTime(s) => {
            out.push_str("<dateTime.iso8601>");
            escape_into(out, s);
            out.push_str("</dateTime.iso8601>");
        }
        Value::Base64(bytes) => {
            out.push_str("<base64>");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
            out.push_str("</base64>");
        }
        Value::Struct(members) => {
            out.push_str("<struct>");
            for (k, v) in members {
                out.push_str("<member><name>");
                escape_into(out, k);
                out.push_str("</name>");
                write_value(out, v);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
        Value::Array(items) => {
            out.push_str("<array><data>");
            for v in items {
                write_value(out, v);
            }
            out.push_str("</data></array>");
        }
        Value::Nil => out.push_str("<nil/>"),
    }
    out.push_str("</value>");
}

/// A `methodResponse` carrying one value.
pub fn response(v: &Value) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodResponse><params><param>");
    write_value(&mut out, v);
    out.push_str("</param></params></methodResponse>\n");
    out
}

/// A `methodResponse` carrying a fault.
pub fn fault(code: i32, message: &str) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodResponse><fault>");
    write_value(
        &mut out,
        &Value::fields(vec![
            ("faultCode", Value::Int(i64::from(code))),
            ("faultString", Value::str(message)),
        ]),
    );
    out.push_str("</fault></methodResponse>\n");
    out
}

/// Parses a `methodResponse` (for tests and for checking what [`response`] writes).
pub fn parse_response(text: &str) -> Result<Result<Value, Value>, ParseError> {
    let mut t = Tokens::new(text);
    t.open("methodResponse")?;
    let answer = match t.next_tag()? {
        Token::Open(n) if n == "params" => {
            t.open("param")?;
            let v = value(&mut t, 0)?;
            t.close("param")?;
            t.close("params")?;
            Ok(v)
        }
        Token::Open(n) if n == "fault" => {
            let v = value(&mut t, 0)?;
            t.close("fault")?;
            Err(v)
        }
        other => return Err(bad(format!("unexpected {}", describe(&other)))),
    };
    t.close("methodResponse")?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_python_sends() {
        let call = parse_call(
            "<?xml version='1.0'?>\n<methodCall>\n<methodName>scheduler.jobs.list</methodName>\n<params>\n\
             <param>\n<value><nil/></value></param>\n\
             <param>\n<value><string>COMPLETE</string></value>\n</param>\n\
             <param>\n<value><int>0</int></value>\n</param>\n\
             <param>\n<value><i8>9000000000</i8></value>\n</param>\n\
             <param>\n<value><boolean>0</boolean></value>\n</param>\n\
             <param>\n<value>bare &amp; text&#33;</value>\n</param>\n\
             <param>\n<value><array><data>\n<value><string>qemu</string></value>\n</data></array></value>\n</param>\n\
             <param>\n<value><struct>\n<member>\n<name>k</name>\n<value><double>1.5</double></value>\n</member>\n</struct></value>\n</param>\n\
             </params>\n</methodCall>\n",
        )
        .expect("parses");
        assert_eq!(call.method, "scheduler.jobs.list");
        assert_eq!(
            call.params,
            vec![
                Value::Nil,
                Value::str("COMPLETE"),
                Value::Int(0),
                Value::Int(9_000_000_000),
                Value::Bool(false),
                Value::str("bare & text!"),
                Value::Array(vec![Value::str("qemu")]),
                Value::Struct(vec![("k".into(), Value::Double(1.5))]),
            ]
        );
        let none = parse_call("<methodCall><methodName>system.version</methodName></methodCall>")
            .expect("no params");
        assert!(none.params.is_empty());
        let empty =
            parse_call("<methodCall><methodName>x</methodName><params/></methodCall>").expect("ok");
        assert!(empty.params.is_empty());
    }

    #[test]
    fn string_whitespace_is_kept() {
        let call = parse_call(
            "<methodCall><methodName>m</methodName><params><param><value><string>  two\nlines </string></value></param></params></methodCall>",
        )
        .expect("parses");
        assert_eq!(call.params, vec![Value::str("  two\nlines ")]);
    }

    #[test]
    fn hostile_documents_are_refused() {
        let bomb = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]>\
                    <methodCall><methodName>&lol2;</methodName></methodCall>";
        let e = parse_call(bomb).expect_err("DTD refused");
        assert!(e.0.contains("DOCTYPE"), "{e}");
        let unknown = "<methodCall><methodName>&lol;</methodName></methodCall>";
        let e = parse_call(unknown).expect_err("unknown entity");
        assert!(e.0.contains("&lol;"), "{e}");
        let deep = format!(
            "<methodCall><methodName>m</methodName><params><param>{}{}</param></params></methodCall>",
            "<value><array><data>".repeat(100),
            "</data></array></value>".repeat(100)
        );
        let e = parse_call(&deep).expect_err("too deep");
        assert!(e.0.contains("deeper"), "{e}");
        let many = format!(
            "<methodCall><methodName>m</methodName><params><param><value><array><data>{}</data></array></value></param></params></methodCall>",
            "<value><int>1</int></value>".repeat(MAX_VALUES + 1)
        );
        let e = parse_call(&many).expect_err("too many");
        assert!(e.0.contains("values"), "{e}");
        for (doc, word) in [
            (
                "<methodCall><methodName>m</methodName><params><param><value><int>x</int></value></param></params></methodCall>",
                "integer",
            ),
            (
                "<methodCall><methodName>m</methodName><params><param><value><foo>1</foo></value></param></params></methodCall>",
                "unknown",
            ),
            (
                "<methodCall><methodName>m</methodName></methodCall><extra/>",
                "after",
            ),
            ("<methodCall><methodName>m</methodName>", "expected"),
            ("<methodCall><methodName>m</methodNam></methodCall>", "XML"),
            ("not xml", "methodCall"),
        ] {
            let e = parse_call(doc).expect_err(doc);
            assert!(e.0.contains(word), "{doc}: {e}");
        }
    }

    #[test]
    fn responses_round_trip() {
        let v = Value::fields(vec![
            ("id", Value::Int(7)),
            ("big", Value::Int(1 << 40)),
            ("text", Value::str("a <b> & \"c\"\r\n\u{1b}[0m")),
            ("none", Value::Nil),
            ("ok", Value::Bool(true)),
            ("at", Value::DateTime("20260102T03:04:05".into())),
            ("data", Value::Base64(b"- {dt: 1}\n".to_vec())),
            (
                "list",
                Value::Array(vec![Value::Double(0.25), Value::Array(vec![])]),
            ),
        ]);
        let back = parse_response(&response(&v))
            .expect("parses")
            .expect("value");
        let Value::Struct(members) = back else {
            panic!("struct");
        };
        assert_eq!(members[2].1, Value::str("a <b> & \"c\"\r\n\u{fffd}[0m"));
        assert_eq!(members[0].1, Value::Int(7));
        assert_eq!(members[1].1, Value::Int(1 << 40));
        assert_eq!(members[6].1, Value::Base64(b"- {dt: 1}\n".to_vec()));
        let f = parse_response(&fault(404, "Job '9' was not found."))
            .expect("parses")
            .expect_err("fault");
        assert_eq!(
            f,
            Value::fields(vec![
                ("faultCode", Value::Int(404)),
                ("faultString", Value::str("Job '9' was not found.")),
            ])
        );
    }
}
