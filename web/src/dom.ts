/** A tiny element builder: user text only ever goes in through textContent, never as HTML. */
type Child = Node | string | false | undefined;

export interface ElementProps {
  class?: string;
  text?: string;
  attrs?: Record<string, string | undefined>;
  onClick?: (event: Event) => void;
}

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: ElementProps = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props.class) el.className = props.class;
  if (props.text !== undefined) el.textContent = props.text;
  for (const [name, value] of Object.entries(props.attrs ?? {})) {
    if (value !== undefined) el.setAttribute(name, value);
  }
  if (props.onClick) el.addEventListener("click", props.onClick);
  for (const child of children) if (child !== false && child !== undefined) el.append(child);
  return el;
}

/** The element with this id, which the page's markup (web/index.html) must have. */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`web/index.html has no #${id}`);
  return el as T;
}
