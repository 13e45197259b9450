// A real OpenID Provider for the sign-in tests: panva's oidc-provider (pinned in
// tests/package.json), configured by tests/support/oidc_provider.py.
//
//   node tests/oidc/provider.mjs <config.json>
//
// Listens on 127.0.0.1, port 0, and prints one JSON line {"issuer": ...} once it serves.
// The config holds the signing keys (private JWKs, so tests can forge tokens with the
// provider's real key), the users, the client metadata and optional token lifetimes.
// Login, consent and device pages are our own, plain HTML with stable ids (the library's
// dev pages accept any login and load web fonts): see tests/support/browser.py.
// POST /__test/users/<id>/groups (JSON list) and /__test/users/<id>/enabled (JSON bool)
// change a user at the provider, as an administrator would; nothing else is added.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const CONTROL_BODY_LIMIT = 64 * 1024;

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = new Map(Object.entries(config.users));

function findUser(login) {
  const wanted = String(login ?? '').trim().toLowerCase();
  for (const [id, user] of users) {
    if (id === wanted || user.email.toLowerCase() === wanted) return [id, user];
  }
  return [undefined, undefined];
}

function account(id) {
  const user = users.get(id);
  // A disabled user has no account: refreshing their tokens fails with invalid_grant.
  if (!user || user.enabled === false) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: user.email,
        email_verified: true,
        name: user.name,
        preferred_username: id,
        groups: [...user.groups],
      };
    },
  };
}

const escape = (value) => String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escape(title)}</title>
<style>body{font-family:sans-serif;max-width:22em;margin:3em auto}label,input,button{display:block;width:100%;margin:.4em 0}input,button{padding:.5em;box-sizing:border-box}.error{color:#b00}</style>
</head><body><h1>${escape(title)}</h1>${body}</body></html>`;
}

const server = http.createServer();
await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  jwks: config.jwks,
  clients: config.clients,
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  findAccount: (_ctx, id) => account(id),
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  // By default the claims of scopes go to the ID token only when no access token is issued
  // (response_type=id_token); the broker reads groups from the ID token of the code flow.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  // The library drops offline_access from an authorization request without prompt=consent
  // (OpenID Connect Core 11), so by default the code flow gets no refresh token. Like
  // Keycloak, give one to every client allowed the grant; without offline_access it ends
  // with the user's session at the provider (expiresWithSession's default).
  issueRefreshToken: (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: { ...config.ttl },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: {
      enabled: true,
      userCodeInputSource: deviceInputPage,
      userCodeConfirmSource: deviceConfirmPage,
      successSource: deviceSuccessPage,
    },
    revocation: { enabled: true },
    introspection: { enabled: true },
    clientCredentials: { enabled: true },
    userinfo: { enabled: true },
    rpInitiatedLogout: { enabled: true, logoutSource: logoutPage, postLogoutSuccessSource: loggedOutPage },
    // Only the client-credentials client gets its access tokens as JWTs for this audience,
    // so a service token from this provider can be verified like any issuer's JWT.
    resourceIndicators: {
      enabled: true,
      defaultResource: (_ctx, client) => (
        client.clientId === config.service_client_id ? config.service_audience : undefined),
      useGrantedResource: () => false,
      getResourceServerInfo: (_ctx, resource, client) => {
        if (client.clientId !== config.service_client_id || resource !== config.service_audience) {
          throw new errors.InvalidTarget();
        }
        return { scope: 'api', audience: resource, accessTokenFormat: 'jwt', accessTokenTTL: 600 };
      },
    },
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    const rows = Object.entries(out).map(([k, v]) => `<p><b>${escape(k)}</b>: <span class="error" id="${escape(k)}">${escape(v)}</span></p>`);
    ctx.body = page('Error', rows.join(''));
  },
});
provider.on('server_error', (_ctx, err) => { console.error('server_error', err); });

async function deviceInputPage(ctx, form, _out, err) {
  const message = err ? `<p class="error" id="device-error">${escape(err.message ?? err.name)}</p>` : '';
  // The library's form has the user_code field; our button submits it.
  ctx.body = page('Device sign-in', `${message}${form.replace('name="user_code"', 'id="user-code" name="user_code"')}
<button id="device-continue" type="submit" form="op.deviceInputForm">Continue</button>`);
}

async function deviceConfirmPage(ctx, form, client, _deviceInfo, userCode) {
  ctx.body = page('Confirm device', `<p><b>${escape(client.clientName || client.clientId)}</b> shows the code
<code id="device-user-code">${escape(userCode)}</code></p>${form}
<button id="device-confirm" type="submit" form="op.deviceConfirmForm">Confirm</button>
<button id="device-abort" type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button>`);
}

async function deviceSuccessPage(ctx) {
  ctx.body = page('Device signed in', '<p id="device-success">You can close this page.</p>');
}

async function logoutPage(ctx, form) {
  ctx.body = page('Sign out', `${form}<button id="logout-yes" type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>`);
}

async function loggedOutPage(ctx) {
  ctx.body = page('Signed out', '<p id="logged-out">You are signed out.</p>');
}

function loginPage(uid, clientName, error) {
  const message = error ? `<p class="error" id="login-error">${escape(error)}</p>` : '';
  return page('Sign in', `<p>to <b>${escape(clientName)}</b></p>${message}
<form method="post" action="/interaction/${uid}/login">
<label>Email <input id="login" name="login" type="text" autocomplete="off" autofocus required></label>
<label>Password <input id="password" name="password" type="password" required></label>
<button id="sign-in" type="submit">Sign in</button></form>
<a id="cancel" href="/interaction/${uid}/abort">Cancel</a>`);
}

function consentPage(uid, clientName, details) {
  const scopes = (details.missingOIDCScope ?? []).map((s) => `<li>${escape(s)}</li>`).join('');
  return page('Authorize', `<p><b>${escape(clientName)}</b> asks for:</p><ul id="scopes">${scopes}</ul>
<form method="post" action="/interaction/${uid}/confirm"><button id="allow" type="submit">Allow</button></form>
<a id="deny" href="/interaction/${uid}/abort">Deny</a>`);
}

async function readBody(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > CONTROL_BODY_LIMIT) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new errors.SessionNotFound('interaction mismatch');
  const { prompt, params } = details;
  const client = await provider.Client.find(params.client_id);
  const clientName = client?.clientName || params.client_id;

  if (req.method === 'GET' && action === undefined) {
    const html = prompt.name === 'login' ? loginPage(uid, clientName) : consentPage(uid, clientName, prompt.details);
    return send(res, 200, 'text/html; charset=utf-8', html);
  }
  if (req.method === 'GET' && action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  if (req.method === 'POST' && action === 'login' && prompt.name === 'login') {
    const form = new URLSearchParams(await readBody(req));
    const [id, user] = findUser(form.get('login'));
    if (!user || user.enabled === false || user.password !== form.get('password')) {
      return send(res, 401, 'text/html; charset=utf-8', loginPage(uid, clientName, 'Wrong email or password.'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: id } }, { mergeWithLastSubmission: false });
  }
  if (req.method === 'POST' && action === 'confirm' && prompt.name === 'consent') {
    // As the library's dev interactions do: grant exactly what the prompt found missing.
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scope] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scope.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  return send(res, 400, 'text/plain', `unexpected ${req.method} ${action ?? ''} at the ${prompt.name} prompt`);
}

async function control(req, res, id, field) {
  const user = users.get(id);
  if (!user) return send(res, 404, 'application/json', JSON.stringify({ error: 'no such user' }));
  const value = JSON.parse(await readBody(req));
  if (field === 'groups' && Array.isArray(value) && value.every((g) => typeof g === 'string')) {
    user.groups = value;
  } else if (field === 'enabled' && typeof value === 'boolean') {
    user.enabled = value;
  } else {
    return send(res, 400, 'application/json', JSON.stringify({ error: `bad ${field}` }));
  }
  return send(res, 200, 'application/json', JSON.stringify({ id, ...user, password: undefined }));
}

const providerCallback = provider.callback();
const INTERACTION = /^\/interaction\/([\w-]+)(?:\/(login|confirm|abort))?$/;
const CONTROL = /^\/__test\/users\/([\w.@-]+)\/(groups|enabled)$/;

server.on('request', (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  const inter = INTERACTION.exec(pathname);
  const ctl = req.method === 'POST' ? CONTROL.exec(pathname) : null;
  let handled;
  if (inter) handled = interaction(req, res, inter[1], inter[2]);
  else if (ctl) handled = control(req, res, ctl[1], ctl[2]);
  else return providerCallback(req, res);
  handled.catch((err) => {
    console.error(pathname, err);
    if (!res.headersSent) send(res, 400, 'text/plain', String(err.message ?? err));
    else res.end();
  });
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => { server.close(); process.exit(0); });
}
// The test holds our stdin open: if it dies without stopping us (SIGKILL), we go too.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();

process.stdout.write(`${JSON.stringify({ issuer, pid: process.pid })}\n`);
