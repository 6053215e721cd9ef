//! The gallery's pages: static HTML that opens from disk, with no server, no script and nothing fetched at view
//! time. A page is a header (the job's counts, error kinds, models and thresholds) and cards: one per sample (its
//! annotated thumbnail, caption, tags, objects, grounded texts and conversations, the long parts collapsed) and one
//! per error row (key, source, stage, kind, message). Every text that came from input is escaped.

use std::fmt::Write;

use lyrics_operators::draw::label_colour;
use lyrics_operators::text::GroundedFormat;
use lyrics_schemas::{ErrorRow, InstructRow, PretrainRow, SampleRow};

/// Text made safe for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn hex([r, g, b]: [u8; 3]) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// What the header of every page says about the job.
pub struct Summary {
    pub output: String,
    pub complete: bool,
    pub units: (u64, u64),
    pub items: u64,
    /// Rows per table, in the job's order.
    pub tables: Vec<(String, u64)>,
    pub errors_by_kind: Vec<(String, u64)>,
    pub warnings_by_kind: Vec<(String, u64)>,
    /// The `refiner` column of the first refined sample: models, checksums and thresholds.
    pub refiner: Option<String>,
    /// The `--where` predicate the samples were chosen by.
    pub predicate: Option<String>,
}

/// The thumbnail of a card: its file name beside the page, and its size.
pub struct Thumb {
    pub file: String,
    pub width: u32,
    pub height: u32,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f6;color:#222}\
header{background:#23232b;color:#eee;padding:12px 20px}header h1{margin:0 0 6px;font-size:20px}\
header table{border-collapse:collapse;font-size:13px}header td{padding:1px 10px 1px 0;vertical-align:top}\
header pre{white-space:pre-wrap;margin:0;font-size:12px;max-width:1200px}\
nav{padding:8px 20px;font-size:14px}nav a{margin-right:8px}\
main{display:flex;flex-wrap:wrap;gap:12px;padding:0 20px 20px}\
.card{background:#fff;border-radius:6px;box-shadow:0 1px 3px #0002;padding:10px;width:380px;font-size:13px;\
overflow-wrap:anywhere}.card h3{margin:4px 0;font-size:14px}.card img{display:block;max-width:100%}\
.error{border-left:5px solid #c0392b}.error dt{font-weight:bold}.error dd{margin:0 0 4px}\
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}\
.tags span{display:inline-block;background:#eef;border-radius:3px;padding:0 4px;margin:1px}\
ul.objects{padding-left:0;list-style:none;margin:4px 0}details{margin:4px 0}\
summary{cursor:pointer;color:#345}header summary{color:#aab}code,pre{font-size:12px}.turn{margin:2px 0}.from{font-weight:bold}";

/// A whole page: the header, the navigation between the `pages`, and the cards.
pub fn page(summary: &Summary, number: usize, pages: usize, cards: &str) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>lyrics-prep gallery: {} (page \
         {number} of {pages})</title><style>{STYLE}</style></head><body>\n",
        esc(&summary.output)
    );
    html.push_str(&header(summary));
    let nav = navigation(number, pages);
    html.push_str(&nav);
    let _ = write!(html, "<main>\n{cards}</main>\n{nav}</body></html>\n");
    html
}

/// The file of page `number` (1-based): `index.html`, then `page-2.html`, ...
pub fn page_file(number: usize) -> String {
    if number <= 1 { "index.html".into() } else { format!("page-{number}.html") }
}

fn navigation(number: usize, pages: usize) -> String {
    let mut nav = String::from("<nav>");
    if number > 1 {
        let _ = write!(nav, "<a href=\"{}\">&larr; previous</a>", page_file(number - 1));
    }
    let _ = write!(nav, "page {number} of {pages} ");
    if number < pages {
        let _ = write!(nav, "<a href=\"{}\">next &rarr;</a>", page_file(number + 1));
    }
    // A page list that stays short for large galleries: the first, the last, and the neighbours.
    for p in (1..=pages).filter(|_| pages > 1) {
        if p == 1 || p == pages || p.abs_diff(number) <= 3 {
            if p == number {
                let _ = write!(nav, "<strong>{p}</strong> ");
            } else {
                let _ = write!(nav, "<a href=\"{}\">{p}</a>", page_file(p));
            }
        }
    }
    nav.push_str("</nav>\n");
    nav
}

fn counts(list: &[(String, u64)]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter().map(|(k, n)| format!("{} {n}", esc(k))).collect::<Vec<_>>().join(", ")
}

fn header(summary: &Summary) -> String {
    let mut h = String::from("<header><h1>lyrics-prep gallery</h1><table>");
    let state = if summary.complete { "complete" } else { "not finished: committed units only" };
    let _ = write!(h, "<tr><td>output</td><td>{} ({state})</td></tr>", esc(&summary.output));
    let _ = write!(
        h,
        "<tr><td>units</td><td>{} of {}</td></tr><tr><td>items</td><td>{}</td></tr>",
        summary.units.0, summary.units.1, summary.items
    );
    let _ = write!(h, "<tr><td>tables</td><td>{}</td></tr>", counts(&summary.tables));
    let _ = write!(h, "<tr><td>errors</td><td>{}</td></tr>", counts(&summary.errors_by_kind));
    if !summary.warnings_by_kind.is_empty() {
        let _ = write!(h, "<tr><td>warnings</td><td>{}</td></tr>", counts(&summary.warnings_by_kind));
    }
    if let Some(predicate) = &summary.predicate {
        let _ = write!(h, "<tr><td>samples where</td><td><code>{}</code></td></tr>", esc(predicate));
    }
    match summary.refiner.as_deref().map(serde_json::from_str::<serde_json::Value>) {
        Some(Ok(value)) => {
            let full = serde_json::to_string_pretty(&value).unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td>models</td><td>{}<details><summary>every file, checksum and setting</summary><pre>{}</pre>\
                 </details></td></tr>",
                esc(&models_line(&value)),
                esc(&full)
            );
        }
        Some(Err(_)) => {
            let text = summary.refiner.clone().unwrap_or_default();
            let _ = write!(h, "<tr><td>models</td><td><pre>{}</pre></td></tr>", esc(&text));
        }
        None => h.push_str("<tr><td>models</td><td>none: the job ran no refiner</td></tr>"),
    }
    h.push_str("</table></header>\n");
    h
}

/// One line per model of the `refiner` description: its role, family and export, and its thresholds.
fn models_line(value: &serde_json::Value) -> String {
    let Some(models) = value.as_object() else { return value.to_string() };
    let mut parts = Vec::new();
    for (role, model) in models {
        let Some(settings) = model.as_object() else { continue };
        let text = |key: &str| settings.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let mut part = format!("{role}: {}", text("family").unwrap_or_default());
        if let Some(export) = text("export") {
            part += &format!(" ({export})");
        }
        let thresholds: Vec<String> = settings
            .iter()
            .filter(|(k, v)| k.contains("threshold") && v.is_number())
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !thresholds.is_empty() {
            part += &format!(", {}", thresholds.join(", "));
        }
        parts.push(part);
    }
    parts.join(" · ")
}

/// The card of one sample. `thumb` is `None` when its image could not be drawn (`why` says so).
pub fn sample_card(
    row: &SampleRow,
    thumb: Result<&Thumb, &str>,
    pretrain: Option<&PretrainRow>,
    conversations: &[&InstructRow],
) -> String {
    let mut c = String::from("<article class=\"card sample\">");
    match thumb {
        Ok(t) => {
            let _ = write!(
                c,
                "<img src=\"{}\" width=\"{}\" height=\"{}\" alt=\"{}\">",
                esc(&t.file),
                t.width,
                t.height,
                esc(&row.key)
            );
        }
        Err(why) => {
            let _ = write!(c, "<p class=\"noimage\">no thumbnail: {}</p>", esc(why));
        }
    }
    let _ = write!(c, "<h3>{}</h3>", esc(&row.key));
    if let Some(caption) = &row.caption {
        let _ = write!(c, "<p class=\"caption\">{}</p>", esc(caption));
    }
    if let Some(tags) = &row.tags {
        c.push_str("<p class=\"tags\">");
        for tag in tags {
            let _ = write!(c, "<span>{} {:.2}</span>", esc(&tag.tag), tag.score);
        }
        c.push_str("</p>");
    }
    if let Some(objects) = &row.objects {
        c.push_str("<ul class=\"objects\">");
        for o in objects {
            let colour = hex(label_colour(&o.label));
            let b = o.bbox;
            let _ = write!(
                c,
                "<li data-label=\"{label}\" data-colour=\"{colour}\" data-box=\"{:.4},{:.4},{:.4},{:.4}\"><span \
                 class=\"swatch\" style=\"background:{colour}\"></span>{label} {:.2} <code>[{:.3}, {:.3}, {:.3}, \
                 {:.3}]</code>{}</li>",
                b[0],
                b[1],
                b[2],
                b[3],
                o.score,
                b[0],
                b[1],
                b[2],
                b[3],
                if o.phrase != o.label { format!(" <em>{}</em>", esc(&o.phrase)) } else { String::new() },
                label = esc(&o.label),
            );
        }
        c.push_str("</ul>");
    }
    if let Some(p) = pretrain {
        c.push_str("<details><summary>grounded text</summary>");
        // The registry's order, whatever the row holds.
        let formats = GroundedFormat::all().iter().filter_map(|f| Some((f.name(), p.format(f.name())?)));
        for (name, text) in std::iter::once(("grounded caption", p.grounded_caption.as_deref()))
            .filter_map(|(n, t)| Some((n, t?)))
            .chain(formats)
        {
            let _ = write!(c, "<p><strong>{name}</strong><br><code>{}</code></p>", esc(text));
        }
        c.push_str("</details>");
    }
    if !conversations.is_empty() {
        let _ = write!(c, "<details><summary>{} conversations</summary>", conversations.len());
        for conversation in conversations {
            let _ = write!(
                c,
                "<div class=\"conversation\"><em>{} ({})</em>",
                esc(&conversation.task),
                esc(&conversation.language)
            );
            for (from, value) in &conversation.conversations {
                let _ =
                    write!(c, "<p class=\"turn\"><span class=\"from\">{}:</span> {}</p>", esc(from), esc(value));
            }
            c.push_str("</div>");
        }
        c.push_str("</details>");
    }
    let _ = writeln!(
        c,
        "<p class=\"meta\">{}×{} {} · <code>{}</code></p></article>",
        row.width,
        row.height,
        esc(&row.format),
        esc(&row.source)
    );
    c
}

/// The card of one error row.
pub fn error_card(row: &ErrorRow) -> String {
    format!(
        "<article class=\"card error\"><h3>{}</h3><dl><dt>source</dt><dd><code>{}</code></dd><dt>stage</dt><dd>{}</dd>\
         <dt>kind</dt><dd>{}</dd><dt>message</dt><dd class=\"message\">{}</dd></dl></article>\n",
        esc(&row.key),
        esc(&row.source),
        esc(&row.stage),
        esc(&row.kind),
        esc(&row.error)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_text_is_escaped() {
        assert_eq!(esc("<img src=x onerror=\"a\">&'"), "&lt;img src=x onerror=&quot;a&quot;&gt;&amp;&#39;");
        let row = ErrorRow {
            key: "<script>".into(),
            source: "s".into(),
            stage: "read".into(),
            kind: "bad_key".into(),
            error: "a < b".into(),
        };
        let card = error_card(&row);
        assert!(!card.contains("<script>") && card.contains("&lt;script&gt;") && card.contains("a &lt; b"));
    }

    #[test]
    fn pages_link_to_their_neighbours() {
        assert_eq!(page_file(1), "index.html");
        assert_eq!(page_file(3), "page-3.html");
        let nav = navigation(2, 3);
        assert!(nav.contains("href=\"index.html\"") && nav.contains("href=\"page-3.html\""));
        assert!(!navigation(1, 1).contains("href"));
    }
}
