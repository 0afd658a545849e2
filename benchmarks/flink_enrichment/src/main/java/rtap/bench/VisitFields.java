package rtap.bench;

import java.io.IOException;
import java.io.Reader;
import java.net.URI;
import java.net.URISyntaxException;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;
import org.yaml.snakeyaml.LoaderOptions;
import org.yaml.snakeyaml.Yaml;
import org.yaml.snakeyaml.constructor.SafeConstructor;

/**
 * {@code visit_fields(url, referrer)}: ROW(utm_source, utm_medium, utm_campaign, utm_term, utm_content,
 * referrer_host, referrer_class) by the rules of services/ingestion/enrichment.py, with java.net.URI for hosts
 * (stricter than Python's urlsplit: a URL it refuses has no host). The referrer database is Snowplow's
 * referers.yaml read from the path in job parameter {@value #DATABASE_PARAMETER}; without it every external
 * referrer is `referral`. Cached per (url, referrer); counts calls and misses like AgentFields.
 */
public final class VisitFields extends ScalarFunction {
    public static final String DATABASE_PARAMETER = "rtap.referrer-database";
    static final String[] UTM_KEYS = {"utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"};
    static final int MAX_UTM_CHARS = 256;
    static final int MAX_HOST_CHARS = 253;

    private transient Map<String, String> database;
    private transient Lru<String, Row> cache;
    private transient long calls;
    private transient long misses;

    @Override
    public void open(FunctionContext context) throws IOException {
        String path = context.getJobParameter(DATABASE_PARAMETER, "");
        start(path.isEmpty() ? Map.of() : loadDatabase(Path.of(path)));
    }

    void start(Map<String, String> referrerDatabase) {
        database = referrerDatabase;
        cache = new Lru<>();
    }

    @DataTypeHint("ROW<utm_source STRING, utm_medium STRING, utm_campaign STRING, utm_term STRING, "
            + "utm_content STRING, referrer_host STRING, referrer_class STRING>")
    public Row eval(String url, String referrer) {
        calls++;
        String page = url == null ? "" : url;
        String key = referrer == null ? page : page + '\n' + referrer;
        Row fields = cache.get(key);
        if (fields == null) {
            misses++;
            fields = derive(page, referrer);
            cache.put(key, fields);
        }
        return fields;
    }

    Row derive(String url, String referrer) {
        String[] utm = utmValues(url);
        String host = referrer == null || referrer.isEmpty() ? null : host(referrer);
        String referrerClass;
        if (utm[1] != null && isPaidMedium(utm[1])) {
            referrerClass = "paid";
        } else if (host == null) {
            referrerClass = "direct";
        } else if (host.equals(host(url))) {
            referrerClass = "internal";
        } else {
            referrerClass = databaseClass(host, referrerPath(referrer));
        }
        return Row.of(utm[0], utm[1], utm[2], utm[3], utm[4], host, referrerClass);
    }

    /** The first non-empty value of each utm_* query parameter, percent-decoded and bounded. */
    static String[] utmValues(String url) {
        String[] found = new String[UTM_KEYS.length];
        if (!url.contains("utm_")) {
            return found;
        }
        int question = url.indexOf('?');
        if (question < 0) {
            return found;
        }
        String query = url.substring(question + 1);
        int hash = query.indexOf('#');
        if (hash >= 0) {
            query = query.substring(0, hash);
        }
        for (String pair : query.split("&")) {
            int equals = pair.indexOf('=');
            if (equals <= 0 || equals == pair.length() - 1) {
                continue;
            }
            String name = decode(pair.substring(0, equals));
            for (int i = 0; i < UTM_KEYS.length; i++) {
                if (found[i] == null && UTM_KEYS[i].equals(name)) {
                    String value = decode(pair.substring(equals + 1));
                    if (!value.isEmpty()) {
                        found[i] = value.length() > MAX_UTM_CHARS ? value.substring(0, MAX_UTM_CHARS) : value;
                    }
                }
            }
        }
        return found;
    }

    static String decode(String text) {
        try {
            return URLDecoder.decode(text, StandardCharsets.UTF_8);
        } catch (IllegalArgumentException malformed) {
            return text;
        }
    }

    static boolean isPaidMedium(String medium) {
        String m = medium.strip().toLowerCase(Locale.ROOT);
        return m.equals("cpc") || m.equals("ppc") || m.startsWith("paid");
    }

    /** The URL's host, lower case, without a leading `www.`; null when it has none or URI refuses it. */
    static String host(String url) {
        String host;
        try {
            host = new URI(url.strip()).getHost();
        } catch (URISyntaxException refused) {
            return null;
        }
        if (host == null) {
            return null;
        }
        host = host.toLowerCase(Locale.ROOT);
        if (host.startsWith("www.")) {
            host = host.substring(4);
        }
        if (host.length() > MAX_HOST_CHARS) {
            host = host.substring(0, MAX_HOST_CHARS);
        }
        return host.isEmpty() ? null : host;
    }

    static String referrerPath(String referrer) {
        int scheme = referrer.indexOf("//");
        String afterScheme = scheme < 0 ? "" : referrer.substring(scheme + 2);
        int slash = afterScheme.indexOf('/');
        String path = slash < 0 ? "" : afterScheme.substring(slash + 1);
        for (char end : new char[] {'/', '?', '#'}) {
            int at = path.indexOf(end);
            if (at >= 0) {
                path = path.substring(0, at);
            }
        }
        return path;
    }

    String databaseClass(String host, String firstSegment) {
        List<String> candidates = new ArrayList<>();
        if (!firstSegment.isEmpty()) {
            candidates.add(host + "/" + firstSegment);
        }
        String[] labels = host.split("\\.");
        for (int i = 0; i < labels.length - 1; i++) {
            candidates.add(String.join(".", java.util.Arrays.copyOfRange(labels, i, labels.length)));
        }
        for (String candidate : candidates) {
            String known = database.get(candidate);
            if (known == null) {
                known = database.get("www." + candidate);
            }
            if (known != null) {
                return known;
            }
        }
        return "referral";
    }

    /** Domain (maybe with a path) -> class, from referers.yaml (mediums other than the four: referral). */
    @SuppressWarnings("unchecked")
    static Map<String, String> loadDatabase(Path path) throws IOException {
        Map<String, String> known = new HashMap<>();
        try (Reader reader = Files.newBufferedReader(path, StandardCharsets.UTF_8)) {
            Map<String, Map<String, Map<String, Object>>> loaded =
                    new Yaml(new SafeConstructor(new LoaderOptions())).load(reader);
            for (Map.Entry<String, Map<String, Map<String, Object>>> medium : loaded.entrySet()) {
                String referrerClass = List.of("search", "social", "email", "paid").contains(medium.getKey())
                        ? medium.getKey()
                        : "referral";
                for (Map<String, Object> source : medium.getValue().values()) {
                    Object domains = source.get("domains");
                    if (domains instanceof List) {
                        for (Object domain : (List<Object>) domains) {
                            known.put(String.valueOf(domain).toLowerCase(Locale.ROOT), referrerClass);
                        }
                    }
                }
            }
        }
        return known;
    }

    @Override
    public void close() {
        System.out.println("rtap-bench visit_fields calls=" + calls + " misses=" + misses);
    }
}
