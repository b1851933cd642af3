import { useState } from "preact/hooks";
import { login } from "../auth";

export function LoginPage({ notice }: { notice?: string | undefined }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: Event) {
    event.preventDefault();
    const form = new FormData(event.currentTarget as HTMLFormElement);
    const email = String(form.get("email") ?? "").trim();
    const password = String(form.get("password") ?? "");
    if (!email || !password) {
      setError("Enter your e-mail address and your password.");
      return;
    }
    setBusy(true);
    setError(null);
    try {
      setError(await login(email, password));
    } catch (e) {
      setError(`The server could not be reached (${e instanceof Error ? e.message : String(e)}).`);
    } finally {
      setBusy(false);
    }
  }

  return (
    <main id="main" class="login">
      <form onSubmit={(e) => void submit(e)} aria-labelledby="login-title" noValidate>
        <h1 id="login-title">Log in to EMMA</h1>
        {notice && !error && <p class="notice" role="status">{notice}</p>}
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <label>
          E-mail address
          <input name="email" type="email" autocomplete="username" required autofocus />
        </label>
        <label>
          Password
          <input name="password" type="password" autocomplete="current-password" required />
        </label>
        <button type="submit" disabled={busy}>
          {busy ? "Logging in…" : "Log in"}
        </button>
      </form>
    </main>
  );
}
