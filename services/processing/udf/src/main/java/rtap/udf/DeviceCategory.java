package rtap.udf;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.regex.Pattern;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code device_category(user_agent, screen_width, screen_height)}: 'bot' | 'tablet' | 'mobile' | 'desktop'.
 *
 * <p>The markers are in device-rules.tsv beside this class. A Java function rather than a SQL CASE of
 * POSITION calls: Flink's POSITION compares at every byte through MemorySegment, ~30 us per event for these
 * markers against ~1 us with String.contains (benchmarks/DeviceCategoryMatch.java, docs/benchmarks.md).
 */
public class DeviceCategory extends ScalarFunction {
    private static final Rules RULES = Rules.load("device-rules.tsv");

    public String eval(String userAgent, Integer screenWidth, Integer screenHeight) {
        String ua = userAgent == null ? "" : userAgent.toLowerCase(Locale.ROOT);
        int shortSide = Math.min(screenWidth == null ? 0 : screenWidth, screenHeight == null ? 0 : screenHeight);
        return RULES.category(ua, shortSide);
    }

    static final class Rules {
        final List<String> bot = new ArrayList<>();
        final List<String> tablet = new ArrayList<>();
        final List<String> tabletModelMarkers = new ArrayList<>();
        final List<Pattern> tabletModels = new ArrayList<>();
        final List<String> phone = new ArrayList<>();
        int tabletMinSide = -1;

        String category(String ua, int shortSide) {
            if (containsAny(ua, bot)) {
                return "bot";
            }
            if (containsAny(ua, tablet) || isTabletModel(ua) || (ua.contains("android") && !ua.contains("mobile"))) {
                return "tablet";
            }
            if (containsAny(ua, phone)) {
                return shortSide >= tabletMinSide ? "tablet" : "mobile";
            }
            return ua.isEmpty() && shortSide > 0 && shortSide < tabletMinSide ? "mobile" : "desktop";
        }

        private boolean isTabletModel(String ua) {
            for (int i = 0; i < tabletModels.size(); i++) {
                if (ua.contains(tabletModelMarkers.get(i)) && tabletModels.get(i).matcher(ua).find()) {
                    return true;
                }
            }
            return false;
        }

        private static boolean containsAny(String ua, List<String> markers) {
            for (String marker : markers) {
                if (ua.contains(marker)) {
                    return true;
                }
            }
            return false;
        }

        static Rules load(String resource) {
            try (InputStream in = DeviceCategory.class.getResourceAsStream(resource)) {
                if (in == null) {
                    throw new IllegalStateException("resource " + resource + " is missing from the rtap-udf jar");
                }
                Rules rules = new Rules();
                BufferedReader reader = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8));
                for (String line = reader.readLine(); line != null; line = reader.readLine()) {
                    if (!line.isBlank() && !line.startsWith("#")) {
                        rules.add(line.split("\t"));
                    }
                }
                if (rules.tabletMinSide < 0) {
                    throw new IllegalStateException(resource + " has no tablet-min-side line");
                }
                return rules;
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }

        private void add(String[] fields) {
            switch (fields[0]) {
                case "tablet-min-side": tabletMinSide = Integer.parseInt(fields[1]); break;
                case "bot": bot.add(fields[1]); break;
                case "tablet": tablet.add(fields[1]); break;
                case "tablet-model":
                    tabletModelMarkers.add(fields[1]);
                    tabletModels.add(Pattern.compile(fields[2]));
                    break;
                case "phone": phone.add(fields[1]); break;
                default: throw new IllegalStateException("unknown device rule kind: " + fields[0]);
            }
        }
    }
}
