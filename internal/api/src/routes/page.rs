//! `GET /`: the live demo page. Plain HTML, JavaScript and CSS compiled into the binary, so
//! nothing needs building or installing at run time.

use poem::http::header;
use poem::{Response, handler};

const INDEX: &str = include_str!("../../static/index.html");
const SCRIPT: &str = include_str!("../../static/app.js");
const STYLE: &str = include_str!("../../static/style.css");

fn file(content_type: &str, body: &'static str) -> Response {
    Response::builder().content_type(content_type).header(header::CACHE_CONTROL, "no-cache").body(body)
}

#[handler]
pub fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

#[handler]
pub fn script() -> Response {
    file("text/javascript; charset=utf-8", SCRIPT)
}

#[handler]
pub fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}
