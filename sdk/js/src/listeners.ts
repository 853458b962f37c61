// Named listeners, each registration undone by the function it returns.

export class Listeners<Events extends object> {
  private readonly registered = new Map<keyof Events, Set<(value: never) => void>>();

  on<K extends keyof Events>(name: K, fn: (value: Events[K]) => void): () => void {
    let set = this.registered.get(name);
    if (!set) {
      set = new Set();
      this.registered.set(name, set);
    }
    const entry = fn as (value: never) => void;
    set.add(entry);
    return () => {
      set.delete(entry);
    };
  }

  /** Calls each listener; one that throws neither stops the others nor the SDK (its error
   * is rethrown on its own, as DOM events report a listener's error). */
  emit<K extends keyof Events>(name: K, value: Events[K]): void {
    for (const fn of [...(this.registered.get(name) ?? [])]) {
      try {
        (fn as (value: Events[K]) => void)(value);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
