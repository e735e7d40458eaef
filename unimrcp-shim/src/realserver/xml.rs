//! Edits of UniMRCP's XML configuration files that keep everything else
//! byte for byte: the text is parsed with roxmltree, the element is found
//! by its place in the tree, and the new text is spliced in at the byte
//! range roxmltree reports for it. Every edit parses afresh, so edits chain
//! (`x = set_child(&x, …)`); the files are small.
//!
//! A path names an element by the chain of elements leading to it, each a
//! descendant of the one before (the first one anywhere in the document):
//! `["components", "sip-uas"]` is the first `<sip-uas>` inside the first
//! `<components>`. The empty path is the root element. The functions panic
//! on a document that is not well-formed and, where they need it, on a path
//! that names no element (these are test fixtures: a panic names the
//! problem).

use std::ops::Range;

use roxmltree::{Document, Node};

/// Where an element's parts sit in its document's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The whole element: `<tag …>…</tag>`, or `<tag …/>`.
    pub outer: Range<usize>,
    /// Its start tag up to (not including) the `>` or `/>` that ends it,
    /// trailing whitespace left out: `<tag a="b"`.
    pub head: Range<usize>,
    /// Its content; for `<tag …/>`, empty at the end of the element.
    pub body: Range<usize>,
    pub self_closing: bool,
    /// The tag's name as written (with its prefix, if any).
    pub qname: String,
}

fn parse(xml: &str) -> Document<'_> {
    Document::parse(xml).unwrap_or_else(|e| panic!("not well-formed XML ({e}):\n{xml}"))
}

fn span_of(xml: &str, node: Node) -> Span {
    let outer = node.range();
    let text = &xml[outer.clone()];
    let qname: String = text[1..].chars().take_while(|c| !c.is_whitespace() && *c != '>' && *c != '/').collect();
    let trim = |end: usize| outer.start + xml[outer.start..end].trim_end().len();
    if text.ends_with("/>") && !node.has_children() {
        return Span {
            head: outer.start..trim(outer.end - 2),
            body: outer.end..outer.end,
            outer,
            self_closing: true,
            qname,
        };
    }
    let close = outer.start + text.rfind("</").expect("an end tag");
    // The start tag ends where the first child begins (or the end tag,
    // when there is none): attribute values may hold a `>`.
    let body_start = node.first_child().map_or(close, |c| c.range().start);
    Span { head: outer.start..trim(body_start - 1), body: body_start..close, outer, self_closing: false, qname }
}

fn find<'a, 'i>(doc: &'a Document<'i>, path: &[&str]) -> Option<Node<'a, 'i>> {
    let mut node = doc.root_element();
    if path.is_empty() {
        return Some(node);
    }
    node = doc.root();
    for name in path {
        node = node.descendants().skip(1).find(|n| n.is_element() && n.has_tag_name(*name))?;
    }
    Some(node)
}

fn locate_node<'a, 'i>(doc: &'a Document<'i>, path: &[&str]) -> Node<'a, 'i> {
    find(doc, path).unwrap_or_else(|| panic!("no <{}> in the configuration", path.join("> <")))
}

/// `xml` with `range` replaced by `with`.
pub fn splice(xml: &str, range: Range<usize>, with: &str) -> String {
    format!("{}{}{}", &xml[..range.start], with, &xml[range.end..])
}

/// `s` escaped for an attribute value or element text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `xml` without its comments (so that commented-out examples are gone
/// from the files the programs read back).
pub fn strip_comments(xml: &str) -> String {
    let doc = parse(xml);
    let comments: Vec<Range<usize>> = doc.descendants().filter(|n| n.is_comment()).map(|n| n.range()).collect();
    let mut out = xml.to_string();
    for range in comments.into_iter().rev() {
        out.replace_range(range, "");
    }
    out
}

/// The element at `path`, if there is one.
pub fn element(xml: &str, path: &[&str]) -> Option<Span> {
    let doc = parse(xml);
    find(&doc, path).map(|n| span_of(xml, n))
}

/// The element at `path`; panics when there is none.
pub fn locate(xml: &str, path: &[&str]) -> Span {
    let doc = parse(xml);
    span_of(xml, locate_node(&doc, path))
}

/// The child elements named `name` of the element at `path`, in order.
pub fn children(xml: &str, path: &[&str], name: &str) -> Vec<Span> {
    let doc = parse(xml);
    let parent = locate_node(&doc, path);
    parent.children().filter(|n| n.is_element() && n.has_tag_name(name)).map(|n| span_of(xml, n)).collect()
}

/// The elements named one of `names` inside the element at `path`, in
/// document order, leaving out any inside another one of them.
pub fn descendants(xml: &str, path: &[&str], names: &[&str]) -> Vec<Span> {
    let doc = parse(xml);
    let top = locate_node(&doc, path);
    let mut found: Vec<Span> = Vec::new();
    for n in top.descendants().skip(1) {
        if n.is_element() && names.iter().any(|name| n.has_tag_name(*name)) {
            if found.last().is_some_and(|last| last.outer.end > n.range().start) {
                continue;
            }
            found.push(span_of(xml, n));
        }
    }
    found
}

/// The value of attribute `name` of the element at `path`.
pub fn attr(xml: &str, path: &[&str], name: &str) -> Option<String> {
    let doc = parse(xml);
    let node = locate_node(&doc, path);
    node.attribute(name).map(str::to_owned)
}

/// Sets attribute `name` of the element at `path` to `value`: its value is
/// replaced in place, or the attribute is added at the end of the start tag.
pub fn set_attr(xml: &str, path: &[&str], name: &str, value: &str) -> String {
    let doc = parse(xml);
    let node = locate_node(&doc, path);
    match node.attributes().find(|a| a.name() == name && a.namespace().is_none()) {
        Some(a) => splice(xml, a.range_value(), &escape(value)),
        None => {
            let at = span_of(xml, node).head.end;
            splice(xml, at..at, &format!(" {name}=\"{}\"", escape(value)))
        }
    }
}

/// Replaces the content of the element at `path` with `body` (raw XML); a
/// `<tag/>` becomes `<tag>body</tag>`.
pub fn set_body(xml: &str, path: &[&str], body: &str) -> String {
    let span = locate(xml, path);
    if span.self_closing {
        let head = &xml[span.head.clone()];
        splice(xml, span.outer, &format!("{head}>{body}</{}>", span.qname))
    } else {
        splice(xml, span.body, body)
    }
}

/// Adds `text` (raw XML) at the end of the content of the element at
/// `path`.
pub fn append(xml: &str, path: &[&str], text: &str) -> String {
    let span = locate(xml, path);
    if span.self_closing {
        set_body(xml, path, text)
    } else {
        splice(xml, span.body.end..span.body.end, text)
    }
}

/// Sets `<child>value</child>` (`value` is raw XML) inside the element at
/// `path`: the first such child element is replaced, or the child is added
/// at the end of the content.
pub fn set_child(xml: &str, path: &[&str], child: &str, value: &str) -> String {
    let new = format!("<{child}>{value}</{child}>");
    match children(xml, path, child).into_iter().next() {
        Some(old) => splice(xml, old.outer, &new),
        None => append(xml, path, &format!("  {new}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small document of the shape of UniMRCP's configuration files.
    const SAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- a sample server configuration -->
<server-config version="2">
  <net>
    <addr kind="auto"/>
    <!-- <addr>192.0.2.7</addr> -->
  </net>
  <parts>
    <listener id="L1" note="a &gt; b">
      <port>7000</port>
    </listener>
    <factory>
      <unit id="U1" name="first" on="true"/>
      <unit id="U2" name="second" on="true">
        <limit>4</limit>
      </unit>
      <group><unit id="U3" name="nested"/></group>
    </factory>
  </parts>
  <sets>
    <media id="M1"><list pref="no">A B C</list></media>
  </sets>
  <plans>
    <plan id="p1"><map><use id="x" by="U1"/></map></plan>
    <plan id="p2"/>
  </plans>
</server-config>
"#;

    #[test]
    fn spans_cover_head_body_and_end_tag() {
        let s = locate(SAMPLE, &["parts", "listener"]);
        assert_eq!(&SAMPLE[s.head.clone()], r#"<listener id="L1" note="a &gt; b""#);
        assert_eq!(SAMPLE[s.body.clone()].trim(), "<port>7000</port>");
        assert!(SAMPLE[s.outer.clone()].ends_with("</listener>") && !s.self_closing);
        let u = locate(SAMPLE, &["factory", "unit"]);
        assert!(u.self_closing && u.body == (u.outer.end..u.outer.end));
        assert_eq!(&SAMPLE[u.head], r#"<unit id="U1" name="first" on="true""#);
        let empty = locate("<a><b></b></a>", &["b"]);
        assert_eq!((empty.body.clone(), &"<a><b></b></a>"[empty.head]), (6..6, "<b"));
        assert_eq!(locate(SAMPLE, &[]).qname, "server-config");
        assert!(element(SAMPLE, &["net", "port"]).is_none(), "a path is followed inside its elements only");
    }

    #[test]
    fn comments_go_and_are_never_matched() {
        let x = strip_comments(SAMPLE);
        assert!(!x.contains("<!--") && !x.contains("192.0.2.7") && x.contains("<addr kind=\"auto\"/>"), "{x}");
        // The commented-out <addr> is not an element, before or after.
        assert_eq!(children(SAMPLE, &["net"], "addr").len(), 1);
    }

    #[test]
    fn bodies_children_and_attributes() {
        let x = set_body(SAMPLE, &["net"], "\n    <addr>127.0.0.1</addr>\n  ");
        assert!(x.contains("<net>\n    <addr>127.0.0.1</addr>\n  </net>") && !x.contains("auto"), "{x}");
        // A child replaced in place, one added at the end of the content.
        let x = set_child(&x, &["parts", "listener"], "port", "7001");
        let x = set_child(&x, &["parts", "listener"], "addr", "127.0.0.1");
        assert!(x.contains("<port>7001</port>\n      <addr>127.0.0.1</addr>\n</listener>"), "{x}");
        // An attribute set in place (entities and all), one added.
        let x = set_attr(&x, &["parts", "listener"], "note", "a < b");
        let x = set_attr(&x, &["factory", "unit"], "on", "false");
        let x = set_attr(&x, &["factory", "unit"], "extra", "1");
        assert!(x.contains(r#"<listener id="L1" note="a &lt; b">"#), "{x}");
        assert!(x.contains(r#"<unit id="U1" name="first" on="false" extra="1"/>"#), "{x}");
        assert_eq!(attr(&x, &["parts", "listener"], "note").as_deref(), Some("a < b"));
        // A self-closing element given content, and a body appended to.
        let x = set_body(&x, &["plans", "plan", "map"], "<use id=\"y\"/>");
        let x = append(&x, &["plans"], "<plan id=\"p3\"/>");
        let y = set_child(&x, &["factory", "unit"], "limit", "9");
        assert!(y.contains(r#"<unit id="U1" name="first" on="false" extra="1">  <limit>9</limit>"#), "{y}");
        assert!(x.contains("<map><use id=\"y\"/></map>") && x.contains("<plan id=\"p3\"/></plans>"), "{x}");
        // Everything else is untouched, byte for byte.
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- a sample server configuration -->"));
        assert!(x.contains(r#"<media id="M1"><list pref="no">A B C</list></media>"#), "{x}");
        roxmltree::Document::parse(&x).expect("still well-formed");
    }

    #[test]
    fn children_and_descendants_by_structure() {
        let units: Vec<String> = children(SAMPLE, &["factory"], "unit")
            .iter()
            .map(|s| attr(&SAMPLE[s.outer.clone()], &[], "id").unwrap())
            .collect();
        assert_eq!(units, ["U1", "U2"], "children only: the unit inside <group> is not one");
        let all = descendants(SAMPLE, &["factory"], &["unit", "group"]);
        assert_eq!(all.len(), 3, "U1, U2 and the group, not the unit inside it: {all:?}");
        let plans = descendants(SAMPLE, &[], &["plan"]);
        assert_eq!(plans.len(), 2);
        // Edits at the end first keep the earlier spans valid.
        let mut x = SAMPLE.to_string();
        for p in plans.into_iter().rev() {
            let mut plan = x[p.outer.clone()].to_string();
            for old in descendants(&plan, &[], &["map"]).into_iter().rev() {
                plan = splice(&plan, old.outer, "");
            }
            plan = append(&plan, &[], "<map/>");
            x = splice(&x, p.outer, &plan);
        }
        assert!(x.contains(r#"<plan id="p1"><map/></plan>"#) && x.contains(r#"<plan id="p2"><map/></plan>"#), "{x}");
    }

    #[test]
    #[should_panic(expected = "no <parts> <nothing> in the configuration")]
    fn a_missing_element_is_named() {
        locate(SAMPLE, &["parts", "nothing"]);
    }
}
