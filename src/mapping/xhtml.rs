//! `text/html` MESSAGE bodies as XHTML-IM (XEP-0071), per RFC 7572 section 5.
//!
//! The HTML is parsed as HTML5 would (scraper), then walked once: elements of the
//! XEP-0071 recommended profile (section 7) are kept with their allowed attributes, `b`/`i`
//! become `strong`/`em`, other elements are unwrapped to their content, and what section 8
//! calls unsafe (scripts, styles sheets, objects, event handlers, `javascript:` links) is
//! removed. The same walk gives the plain-text `<body/>` that must stand beside it.

use scraper::{ElementRef, Html, Node};
use xmpp_parsers::minidom::rxml::{Namespace, NcName};
use xmpp_parsers::minidom::Element;

pub const NS_XHTML_IM: &str = "http://jabber.org/protocol/xhtml-im";
pub const NS_XHTML: &str = "http://www.w3.org/1999/xhtml";

/// The XHTML-IM payload and the plain text beside it.
#[derive(Debug, Clone)]
pub struct XhtmlIm {
    pub html: Element,
    pub plain: String,
}

/// Elements whose content is never shown (XEP-0071 section 8, and non-content HTML).
const DROPPED: &[&str] = &[
    "script", "style", "head", "title", "object", "embed", "applet", "iframe", "frame", "frameset",
    "noscript", "template", "form", "input", "button", "select", "textarea", "meta", "link",
    "base", "svg", "math",
];

/// Block elements: their text is separated from the text around it by a line break.
const BLOCKS: &[&str] = &[
    "p",
    "blockquote",
    "li",
    "ol",
    "ul",
    "div",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "tr",
];

fn profile_name(name: &str) -> Option<&'static str> {
    Some(match name {
        "a" => "a",
        "blockquote" => "blockquote",
        "br" => "br",
        "cite" => "cite",
        "em" | "i" => "em",
        "img" => "img",
        "li" => "li",
        "ol" => "ol",
        "p" => "p",
        "span" => "span",
        "strong" | "b" => "strong",
        "ul" => "ul",
        _ => return None,
    })
}

fn allowed_attribute(element: &str, attr: &str) -> bool {
    match (element, attr) {
        (_, "style") => true,
        ("a", "href" | "type") => true,
        ("img", "alt" | "height" | "src" | "width") => true,
        ("blockquote" | "cite", "cite") => false,
        _ => false,
    }
}

/// A URI that may be kept in `href`/`src`: no script or data schemes.
fn safe_uri(value: &str) -> bool {
    let v: String = value
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect::<String>()
        .to_ascii_lowercase();
    !(v.starts_with("javascript:") || v.starts_with("vbscript:") || v.starts_with("data:"))
}

/// CSS that can fetch or run something is dropped as a whole attribute.
fn safe_style(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    !(v.contains("url(")
        || v.contains("expression")
        || v.contains("javascript:")
        || v.contains('\\'))
}

fn keep_text(s: &str) -> String {
    super::message::xml_safe(s).into_owned()
}

struct Walk {
    plain: String,
}

impl Walk {
    fn newline(&mut self) {
        if !self.plain.is_empty() && !self.plain.ends_with('\n') {
            self.plain.push('\n');
        }
    }

    /// Appends the converted children of `el` to `out`.
    fn children(&mut self, el: ElementRef<'_>, out: &mut Element, depth: usize) {
        for child in el.children() {
            match child.value() {
                Node::Text(t) => {
                    let t = keep_text(t);
                    self.plain.push_str(&t);
                    out.append_text_node(t);
                }
                Node::Element(_) => {
                    if let Some(child) = ElementRef::wrap(child) {
                        self.element(child, out, depth + 1);
                    }
                }
                _ => {}
            }
        }
    }

    fn element(&mut self, el: ElementRef<'_>, out: &mut Element, depth: usize) {
        let name = el.value().name();
        if DROPPED.contains(&name) {
            return;
        }
        // Deeply nested markup is flattened: a hostile body cannot make a deep tree.
        if depth > 32 {
            for node in el.descendants() {
                let Node::Text(t) = node.value() else {
                    continue;
                };
                let parent = node
                    .parent()
                    .and_then(|p| p.value().as_element().map(|e| e.name()));
                if !parent.is_some_and(|p| DROPPED.contains(&p)) {
                    let t = keep_text(t);
                    self.plain.push_str(&t);
                    out.append_text_node(t);
                }
            }
            return;
        }
        let block = BLOCKS.contains(&name);
        if block {
            self.newline();
        }
        match profile_name(name) {
            Some("br") => {
                self.plain.push('\n');
                out.append_child(Element::builder("br", NS_XHTML).build());
            }
            Some(kept) => {
                let mut e = Element::builder(kept, NS_XHTML).build();
                for (attr, value) in el.value().attrs() {
                    let ok = allowed_attribute(kept, attr)
                        && match attr {
                            "href" | "src" => safe_uri(value),
                            "style" => safe_style(value),
                            _ => true,
                        };
                    if let (true, Ok(name)) = (ok, NcName::try_from(attr)) {
                        e.set_attr(Namespace::NONE, name, keep_text(value));
                    }
                }
                if kept == "img" {
                    if let Some(alt) = el.value().attr("alt") {
                        self.plain.push_str(&keep_text(alt));
                    }
                }
                self.children(el, &mut e, depth);
                out.append_child(e);
            }
            None => self.children(el, out, depth),
        }
        if block {
            self.newline();
        }
    }
}

/// Converts an HTML body (a fragment or a whole document) to XHTML-IM and plain text.
pub fn html_to_xhtml_im(html: &str) -> XhtmlIm {
    let doc = Html::parse_document(html);
    let mut body = Element::builder("body", NS_XHTML).build();
    let mut walk = Walk {
        plain: String::new(),
    };
    let root = doc.root_element();
    // parse_document always gives html > (head, body); convert what is in body.
    let source = root
        .children()
        .filter_map(ElementRef::wrap)
        .find(|e| e.value().name() == "body")
        .unwrap_or(root);
    walk.children(source, &mut body, 0);
    let plain = walk.plain.trim().to_string();
    let html = Element::builder("html", NS_XHTML_IM).append(body).build();
    XhtmlIm { html, plain }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(html: &str) -> (String, String) {
        let x = html_to_xhtml_im(html);
        (String::from(&x.html), x.plain)
    }

    #[test]
    fn the_recommended_profile_is_kept() {
        let (xml, plain) =
            out("<p>Hello <b>Juliet</b>, <a href='https://example.com/'>look</a></p>");
        assert_eq!(
            xml,
            "<html xmlns='http://jabber.org/protocol/xhtml-im'>\
             <body xmlns='http://www.w3.org/1999/xhtml'><p>Hello <strong>Juliet</strong>, \
             <a href='https://example.com/'>look</a></p></body></html>"
        );
        assert_eq!(plain, "Hello Juliet, look");
    }

    #[test]
    fn unsafe_markup_is_removed() {
        let (xml, plain) = out(
            "<p onclick='x()'>a<script>alert(1)</script><a href=' javascript:alert(1)'>b</a>\
             <span style='background:url(http://evil/)'>c</span><iframe src='x'>d</iframe></p>",
        );
        assert!(!xml.contains("script"), "{xml}");
        assert!(!xml.contains("onclick"), "{xml}");
        assert!(!xml.contains("javascript"), "{xml}");
        assert!(!xml.contains("url("), "{xml}");
        assert!(!xml.contains("iframe"), "{xml}");
        assert_eq!(plain, "abc");
    }

    #[test]
    fn unknown_elements_are_unwrapped_and_blocks_become_lines() {
        let (xml, plain) = out("<div><font color=red>one</font></div><p>two<br>three</p>");
        assert!(!xml.contains("font"), "{xml}");
        assert_eq!(plain, "one\ntwo\nthree");
    }

    #[test]
    fn deep_and_broken_markup_does_not_hurt() {
        let deep = "<span>".repeat(5000) + "x";
        let (_, plain) = out(&deep);
        assert_eq!(plain, "x");
        let (_, plain) = out("<p><b>unclosed <i>tags\u{1}");
        assert_eq!(plain, "unclosed tags");
    }
}
