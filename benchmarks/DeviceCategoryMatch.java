// Cost of the device-category marker tests on one user agent, outside Flink: Flink SQL's POSITION and LIKE
// (the runtime code they compile to) against Java's String.contains, over every marker in device-rules.tsv.
// Run with the Flink jars PyFlink ships (single-file source launch, no build):
//   L=.venv/lib/python3.11/site-packages/pyflink/lib
//   java -cp "$L/*" benchmarks/DeviceCategoryMatch.java
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Collectors;
import org.apache.flink.table.data.binary.BinaryStringData;
import org.apache.flink.table.runtime.functions.SqlFunctionUtils;
import org.apache.flink.table.runtime.functions.SqlLikeChainChecker;

public class DeviceCategoryMatch {
    static final String RULES = "services/processing/udf/src/main/resources/rtap/udf/device-rules.tsv";
    static final String AGENT = "mozilla/5.0 (windows nt 10.0; win64; x64) applewebkit/537.36 (khtml, like gecko) "
            + "chrome/120.0.0.0 safari/537.36";  // a desktop agent matches no marker: every test scans it whole
    static final int ROWS = 200_000;

    public static void main(String[] args) throws Exception {
        List<String> markers = Files.readAllLines(Path.of(RULES)).stream()
                .filter(l -> !l.isBlank() && !l.startsWith("#") && !l.startsWith("tablet-min-side"))
                .map(l -> l.split("\t")[1]).collect(Collectors.toList());
        BinaryStringData[] literals = markers.stream().map(BinaryStringData::fromString).toArray(BinaryStringData[]::new);
        SqlLikeChainChecker[] likes = markers.stream().map(m -> new SqlLikeChainChecker("%" + m + "%"))
                .toArray(SqlLikeChainChecker[]::new);
        BinaryStringData agent = BinaryStringData.fromBytes(AGENT.getBytes());
        System.out.printf("%d markers, %d-byte agent, %d rows per measurement%n", markers.size(), AGENT.length(), ROWS);
        for (int round = 1; round <= 4; round++) {
            long hits = 0, t0 = System.nanoTime();
            for (int n = 0; n < ROWS; n++) for (BinaryStringData l : literals) hits += SqlFunctionUtils.position(l, agent);
            long t1 = System.nanoTime();
            for (int n = 0; n < ROWS; n++) for (SqlLikeChainChecker l : likes) hits += l.check(agent) ? 1 : 0;
            long t2 = System.nanoTime();
            for (int n = 0; n < ROWS; n++) for (String m : markers) hits += AGENT.contains(m) ? 1 : 0;
            long t3 = System.nanoTime();
            System.out.printf("round %d: POSITION %,d ns/event, LIKE %,d ns/event, String.contains %,d ns/event (hits %d)%n",
                    round, (t1 - t0) / ROWS, (t2 - t1) / ROWS, (t3 - t2) / ROWS, hits);
        }
    }
}
