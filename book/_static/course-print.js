// Keep exercise solutions hidden while the page prints (see course-print.css), and keep
// them out of the summaries that the search page quotes from each page.
(function () {
  const root = document.documentElement;
  window.addEventListener("beforeprint", () => root.classList.add("course-printing"));
  window.addEventListener("afterprint", () => root.classList.remove("course-printing"));

  // searchtools.js declares `const Search` at the top level: a global binding, but not a
  // property of window, so it is looked up by name (typeof is safe before it exists).
  function patchSearch() {
    if (typeof Search === "undefined" || !Search.htmlToText || Search._courseNoSolutions) return;
    const htmlToText = Search.htmlToText;
    Search.htmlToText = (htmlString, anchor) => {
      const doc = new DOMParser().parseFromString(htmlString, "text/html");
      doc.querySelectorAll(".solution").forEach((el) => el.remove());
      return htmlToText(doc.documentElement.outerHTML, anchor);
    };
    Search._courseHtmlToTextWithSolutions = htmlToText; // for tests/test_browser_course.py
    Search._courseNoSolutions = true;
  }
  patchSearch();
  document.addEventListener("DOMContentLoaded", patchSearch);
})();
