// The SQL editor: CodeMirror 6 with SQL highlighting, completion of
// collection and column names, and a mark on the line an error points at.
import { autocompletion, closeBrackets, closeBracketsKeymap, completionKeymap } from "@codemirror/autocomplete";
import { defaultKeymap, history, historyKeymap } from "@codemirror/commands";
import { PostgreSQL, sql } from "@codemirror/lang-sql";
import { bracketMatching, defaultHighlightStyle, HighlightStyle, syntaxHighlighting } from "@codemirror/language";
import { Compartment, EditorState, StateEffect, StateField } from "@codemirror/state";
import { Decoration, drawSelection, EditorView, highlightActiveLine, keymap, lineNumbers, placeholder } from "@codemirror/view";
import { tags } from "@lezer/highlight";

const language = new Compartment();
const markError = StateEffect.define();

// The line an error points at, until the text changes.
const errorLine = StateField.define({
  create: () => Decoration.none,
  update(marks, tr) {
    if (tr.docChanged) return Decoration.none;
    for (const effect of tr.effects) {
      if (effect.is(markError)) {
        marks = effect.value === null
          ? Decoration.none
          : Decoration.set([Decoration.line({ class: "cm-error-line" }).range(effect.value)]);
      }
    }
    return marks;
  },
  provide: (field) => EditorView.decorations.from(field),
});

const darkHighlight = HighlightStyle.define([
  { tag: tags.keyword, color: "#ff7b72" },
  { tag: [tags.string, tags.special(tags.string)], color: "#a5d6ff" },
  { tag: [tags.number, tags.bool, tags.null], color: "#79c0ff" },
  { tag: tags.comment, color: "#8b949e", fontStyle: "italic" },
  { tag: [tags.typeName, tags.function(tags.variableName)], color: "#d2a8ff" },
]);

export function sqlLanguage(schema) {
  return sql({ dialect: PostgreSQL, schema, upperCaseKeywords: true });
}

// An editor in `parent`; Mod-Enter calls `run`, `onChange` hears every edit. Tab moves focus on (it is
// not captured), so the page stays keyboard-navigable.
export function createEditor(parent, { doc, run, label, onChange = () => {} }) {
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        lineNumbers(),
        history(),
        drawSelection(),
        highlightActiveLine(),
        bracketMatching(),
        closeBrackets(),
        autocompletion({ activateOnTyping: true }),
        syntaxHighlighting(dark ? darkHighlight : defaultHighlightStyle, { fallback: true }),
        language.of(sqlLanguage({})),
        errorLine,
        placeholder("SELECT … FROM <collection>   (Ctrl+Enter runs)"),
        keymap.of([
          { key: "Mod-Enter", run: () => { run(); return true; } },
          ...closeBracketsKeymap,
          ...completionKeymap,
          ...historyKeymap,
          ...defaultKeymap,
        ]),
        EditorView.contentAttributes.of({ "aria-label": label, "aria-multiline": "true" }),
        EditorView.lineWrapping,
        EditorView.updateListener.of((update) => {
          if (update.docChanged) onChange(update.state.doc.toString());
        }),
      ],
    }),
  });
  return {
    view,
    // The text as typed: edits the editor has not read from the page yet (it
    // reads them on the next animation frame) are read first, so a Run
    // clicked right after a paste runs the pasted SQL, not the one before.
    text: () => {
      view.observer?.forceFlush?.();
      return view.state.doc.toString();
    },
    setText(text) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
    },
    // Completion of these collections' names and columns.
    setSchema(schema) {
      view.dispatch({ effects: language.reconfigure(sqlLanguage(schema)) });
    },
    // Puts the cursor where an error points and marks its line (null clears).
    markError(position) {
      if (!position) {
        view.dispatch({ effects: markError.of(null) });
        return;
      }
      const doc = view.state.doc;
      const line = doc.line(Math.min(Math.max(position.line, 1), doc.lines));
      const at = Math.min(line.from + Math.max(position.column - 1, 0), line.to);
      view.dispatch({ selection: { anchor: at }, effects: markError.of(line.from), scrollIntoView: true });
    },
  };
}
