package rtap.bench;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;
import ua_parser.OS;
import ua_parser.Parser;
import ua_parser.UserAgent;

/**
 * {@code agent_fields(user_agent)}: ROW(browser, browser_version, os, os_version), uap-java's families and major
 * versions ("Other" and null when unknown), cached per agent string like ingestion's agent_fields. Counts its
 * calls and cache misses and prints them to the TaskManager's stdout when closed.
 */
public final class AgentFields extends ScalarFunction {
    public static final String ROW_TYPE = "ROW<browser STRING, browser_version STRING, os STRING, os_version STRING>";

    private transient Parser parser;
    private transient Lru<String, Row> cache;
    private transient long calls;
    private transient long misses;

    @Override
    public void open(FunctionContext context) {
        parser = new Parser();
        cache = new Lru<>();
    }

    @DataTypeHint(ROW_TYPE)
    public Row eval(String userAgent) {
        calls++;
        String agent = userAgent == null ? "" : userAgent;
        Row fields = cache.get(agent);
        if (fields == null) {
            misses++;
            fields = parse(parser, agent);
            cache.put(agent, fields);
        }
        return fields;
    }

    /** The four fields of one agent, uncached. */
    static Row parse(Parser parser, String agent) {
        UserAgent browser = parser.parseUserAgent(agent);
        OS os = parser.parseOS(agent);
        return Row.of(browser.family, emptyToNull(browser.major), os.family, emptyToNull(os.major));
    }

    static String emptyToNull(String value) {
        return value == null || value.isEmpty() ? null : value;
    }

    @Override
    public void close() {
        System.out.println("rtap-bench agent_fields calls=" + calls + " misses=" + misses);
    }
}
