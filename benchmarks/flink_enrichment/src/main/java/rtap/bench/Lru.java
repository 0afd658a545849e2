package rtap.bench;

import java.util.LinkedHashMap;
import java.util.Map;

/** A bounded least-recently-used map, as ingestion's functools.lru_cache (one per function instance). */
final class Lru<K, V> extends LinkedHashMap<K, V> {
    static final int ENTRIES = 4096;

    Lru() {
        super(16, 0.75f, true);
    }

    @Override
    protected boolean removeEldestEntry(Map.Entry<K, V> eldest) {
        return size() > ENTRIES;
    }
}
