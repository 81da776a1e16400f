// Marks each figure that is wider than its box (on a phone the book keeps a figure at a
// width where its text stays readable, and lets it scroll), so that geoattn.css can say
// so under it: an opaque image hides the shadow cue that equations and tables get.
(function () {
  const boxes = "figure a.image-reference, div.cell_output > a.image-reference";
  function mark() {
    document.querySelectorAll(boxes).forEach((a) => {
      a.classList.toggle("geoattn-scrolls", a.scrollWidth > a.clientWidth + 1);
    });
  }
  window.addEventListener("load", () => {
    mark();
    document.querySelectorAll(boxes.replace(/a\.image-reference/g, "img")).forEach((img) =>
      img.addEventListener("load", mark));
  });
  window.addEventListener("resize", mark);
})();
