package main

import (
	"strconv"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// The part of Lua's os library Argo CD lets scripts use: time and date, nothing that can
// touch files, processes or the environment.
var safeOsFuncs = map[string]lua.LGFunction{"time": osTime, "date": osDate}

func openSafeOs(L *lua.LState) int {
	L.Push(L.RegisterModule(lua.OsLibName, safeOsFuncs))
	return 1
}

func loadSafeOs(L *lua.LState) int {
	L.Push(L.SetFuncs(L.NewTable(), safeOsFuncs))
	return 1
}

// os.time([table]): now, or the local time a {year, month, day, hour, min, sec} table names.
func osTime(L *lua.LState) int {
	if L.GetTop() == 0 {
		L.Push(lua.LNumber(time.Now().Unix()))
		return 1
	}
	t := L.CheckTable(1)
	field := func(name string, fallback int) int {
		if n, ok := t.RawGetString(name).(lua.LNumber); ok {
			return int(n)
		}
		return fallback
	}
	at := time.Date(field("year", -1), time.Month(field("month", -1)), field("day", -1),
		field("hour", 12), field("min", 0), field("sec", 0), 0, time.Local)
	L.Push(lua.LNumber(at.Unix()))
	return 1
}

// os.date([format [, time]]): "!" first means UTC; "*t" returns a table.
func osDate(L *lua.LState) int {
	format := L.OptString(1, "%c")
	at := time.Now()
	if L.GetTop() >= 2 {
		at = time.Unix(L.CheckInt64(2), 0)
	}
	if strings.HasPrefix(format, "!") {
		at = at.UTC()
		format = format[1:]
	}
	if strings.HasPrefix(format, "*t") {
		t := L.NewTable()
		for name, value := range map[string]int{
			"year": at.Year(), "month": int(at.Month()), "day": at.Day(), "hour": at.Hour(),
			"min": at.Minute(), "sec": at.Second(), "wday": int(at.Weekday()) + 1, "yday": at.YearDay(),
		} {
			t.RawSetString(name, lua.LNumber(value))
		}
		t.RawSetString("isdst", lua.LFalse)
		L.Push(t)
		return 1
	}
	L.Push(lua.LString(strftime(at, format)))
	return 1
}

// Go layouts for C's strftime conversions.
var strftimeLayouts = map[byte]string{
	'a': "Mon", 'A': "Monday", 'b': "Jan", 'B': "January", 'c': "Mon Jan  2 15:04:05 2006",
	'd': "02", 'F': "2006-01-02", 'H': "15", 'I': "03", 'm': "01", 'M': "04", 'p': "PM",
	'S': "05", 'T': "15:04:05", 'x': "01/02/06", 'X': "15:04:05", 'y': "06", 'Y': "2006",
	'z': "-0700", 'Z': "MST",
}

func strftime(at time.Time, format string) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' || i == len(format)-1 {
			b.WriteByte(c)
			continue
		}
		i++
		switch conv := format[i]; {
		case conv == '%':
			b.WriteByte('%')
		case conv == 'j':
			b.WriteString(strconv.Itoa(at.YearDay()))
		case conv == 'w':
			b.WriteString(strconv.Itoa(int(at.Weekday())))
		case strftimeLayouts[conv] != "":
			b.WriteString(at.Format(strftimeLayouts[conv]))
		default:
			b.WriteByte('%')
			b.WriteByte(conv)
		}
	}
	return b.String()
}
