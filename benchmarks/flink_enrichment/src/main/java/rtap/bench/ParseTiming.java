package rtap.bench;

import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Consumer;
import org.apache.flink.types.Row;
import ua_parser.Parser;

/**
 * CPU per parse of the functions' work outside Flink, after a warm-up of the same size:
 * {@code java -cp <jars> rtap.bench.ParseTiming AGENTS_FILE REFERERS_YAML N}. Prints each agent's fields (tab
 * separated, "-" for null), then microseconds of thread CPU per call for: a distinct agent per call (uap-java
 * runs), the file's agents cycled through AgentFields' cache, a distinct referrer host per call (the database
 * walk runs).
 */
public final class ParseTiming {
    private static final ThreadMXBean THREADS = ManagementFactory.getThreadMXBean();

    public static void main(String[] args) throws Exception {
        List<String> agents = Files.readAllLines(Path.of(args[0]), StandardCharsets.UTF_8);
        Parser parser = new Parser();
        for (String agent : agents) {
            Row fields = AgentFields.parse(parser, agent);
            StringBuilder line = new StringBuilder();
            for (int i = 0; i < fields.getArity(); i++) {
                Object value = fields.getField(i);
                line.append(value == null ? "-" : value).append('\t');
            }
            System.out.println("fields\t" + line + agent);
        }
        int n = Integer.parseInt(args[2]);
        report("distinct agent", n, round -> {
            for (int i = 0; i < n; i++) {
                AgentFields.parse(parser, agents.get(i % agents.size()) + " build/" + round + "-" + i);
            }
        });
        AgentFields cached = new AgentFields();
        cached.open(null);
        report("cached agent", n, round -> {
            for (int i = 0; i < n; i++) {
                cached.eval(new String(agents.get(i % agents.size())));
            }
        });
        VisitFields visits = new VisitFields();
        visits.start(VisitFields.loadDatabase(Path.of(args[1])));
        report("distinct referrer", n, round -> {
            for (int i = 0; i < n; i++) {
                visits.derive("https://shop.example/p", "https://site-" + round + "-" + i + ".example/page");
            }
        });
    }

    /** Runs `work` (round 0) untimed as a warm-up, then times it (round 1) and prints us of CPU per call. */
    private static void report(String what, int n, Consumer<Integer> work) {
        work.accept(0);
        long started = THREADS.getCurrentThreadCpuTime();
        work.accept(1);
        double us = (THREADS.getCurrentThreadCpuTime() - started) / 1e3 / n;
        System.out.printf("%-18s: %7.2f us of CPU per call (JVM, after %d warm-up calls)%n", what, us, n);
    }
}
