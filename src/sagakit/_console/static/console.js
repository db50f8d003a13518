// Draw the saga's definition (the only script of our own; no inline scripts: see the CSP).
document.addEventListener("DOMContentLoaded", function () {
  if (window.mermaid) {
    window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", flowchart: { useMaxWidth: true } });
    window.mermaid.run({ querySelector: "pre.mermaid" });
  }
});
