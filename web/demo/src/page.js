// What both pages (the app's, index.html, and the guest's, guest.html) build their DOM with.
export const $ = (id) => document.getElementById(id);

export const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

export function showError(err) {
  $('error').textContent = err.message;
  $('error').hidden = false;
}

// A participant as people read it: a guest by the name they gave, an app user by id.
export const label = (participant) =>
  participant.guest ? `${participant.name || participant.userId} (guest)` : participant.userId;

// The page's configuration from the demo server: the API's URL (REST and Socket.IO) and the
// demo users.
export async function demoConfig() {
  const config = await (await fetch('config.json')).json();
  return { ...config, apiUrl: config.apiUrl || location.origin };
}
