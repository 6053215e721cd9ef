// Opens a gallery page in headless Chromium (Debian's), the way a person would from disk, and reports what the
// page shows as JSON on stdout: the sample and error cards, every <img> and whether it loaded (naturalWidth > 0,
// read in the page), the page's text, and any request that was not for a local file (there must be none: the
// gallery fetches nothing at view time). Takes a screenshot of the first screenful.
//
//   NODE_PATH=.tools/node_modules node tests/browser/gallery.cjs PAGE.html SHOT.png
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

async function main() {
  const [page_path, shot] = process.argv.slice(2);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "gallery-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1280, height: 900 },
  });
  const external = [];
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith("file://")) return route.continue();
    external.push(url);
    return route.abort();
  });
  try {
    const page = await context.newPage();
    await page.goto("file://" + path.resolve(page_path), { waitUntil: "load" });
    const report = await page.evaluate(() => ({
      samples: document.querySelectorAll("article.card.sample").length,
      errors: document.querySelectorAll("article.card.error").length,
      images: [...document.images].map((img) => ({
        src: img.getAttribute("src"),
        loaded: img.complete && img.naturalWidth > 0,
        width: img.naturalWidth,
        height: img.naturalHeight,
      })),
      text: document.body.innerText,
    }));
    report.external = external;
    await page.screenshot({ path: shot });
    process.stdout.write(JSON.stringify(report));
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
